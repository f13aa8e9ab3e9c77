"""Who may do what: credentials (API keys, JWT bearer tokens), scopes and AE bindings, TLS
contexts. Protocol-agnostic: the REST middleware and the DIMSE negotiation both ask it."""
