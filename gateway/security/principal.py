"""A caller the gateway has identified, what it may do (scopes) and for which AE titles it may
watch (subscribe, unsubscribe, suspend, open an event channel)."""

from __future__ import annotations

from dataclasses import dataclass

READ, WRITE, PERFORM, WATCH = "ups.read", "ups.write", "ups.perform", "ups.watch"
ALL_SCOPES = frozenset((READ, WRITE, PERFORM, WATCH))
ANY_AE = "*"


@dataclass(frozen=True)
class Principal:
    name: str  # who, for the logs: "apikey:NAME", a token's subject, "ae:CALLING_AE"
    scopes: frozenset[str]
    ae_titles: frozenset[str]  # "*" among them: any AE
    method: str = "none"  # apikey | jwt | ticket | ae | none

    def may(self, scope: str) -> bool:
        return scope in self.scopes

    def may_watch(self, ae: str | None) -> bool:
        """Whether this caller may act on the subscriptions and channel of ``ae``."""
        return ae is not None and (ANY_AE in self.ae_titles or ae in self.ae_titles)

    @property
    def single_ae(self) -> str | None:
        """The one AE title this caller is bound to, if it is bound to exactly one."""
        if len(self.ae_titles) == 1 and ANY_AE not in self.ae_titles:
            return next(iter(self.ae_titles))
        return None


# Authentication switched off: everybody may do everything, for any AE.
ANONYMOUS = Principal("anonymous", ALL_SCOPES, frozenset((ANY_AE,)))
