// Interoperability tier: a UPS Event SCU written with dcmjs-dimse (not pynetdicom) that receives
// the gateway's N-EVENT-REPORTs. It accepts UPS Event in the first transfer syntax proposed that
// it takes, announces MAX_PDU as its Maximum Length Received, answers every report with Success
// and prints one JSON line per report (what the request carried, and the AE titles).
// tests/test_dimse_requestor.py judges them.
//
// usage: node event_receiver.js PORT AE_TITLE [MAX_PDU]

'use strict';

const dcmjsDimse = require('dcmjs-dimse');

const { Server, Scp, log } = dcmjsDimse;
const { NEventReportResponse } = dcmjsDimse.responses;
const { Status, PresentationContextResult, TransferSyntax } = dcmjsDimse.constants;

const EVENT = '1.2.840.10008.5.1.4.34.6.4';
const SYNTAXES = [TransferSyntax.ExplicitVRLittleEndian, TransferSyntax.ImplicitVRLittleEndian];

const [port, aeTitle, maxPdu] = process.argv.slice(2);
if (!port || !aeTitle) {
  console.error('usage: node event_receiver.js PORT AE_TITLE [MAX_PDU]');
  process.exit(2);
}
log.setLevel('error');

function emit(entry) {
  process.stdout.write(JSON.stringify(entry) + '\n');
}

class EventScu extends Scp {
  associationRequested(association) {
    this.association = association;
    if (maxPdu) {
      association.setMaxPduLength(Number(maxPdu));
    }
    association.getPresentationContexts().forEach((c) => {
      const context = association.getPresentationContext(c.id);
      const syntax = context.getTransferSyntaxUids().find((s) => SYNTAXES.includes(s));
      if (context.getAbstractSyntaxUid() === EVENT && syntax) {
        context.setResult(PresentationContextResult.Accept, syntax);
      } else {
        context.setResult(PresentationContextResult.RejectAbstractSyntaxNotSupported);
      }
    });
    this.sendAssociationAccept();
  }

  nEventReportRequest(request, callback) {
    const dataset = request.getDataset();
    emit({
      type: 'report',
      messageId: request.getMessageId(),
      sopClass: request.getAffectedSopClassUid(),
      sopInstance: request.getAffectedSopInstanceUid(),
      eventTypeId: request.getEventTypeId(),
      transferSyntax: dataset ? dataset.getTransferSyntaxUid() : null,
      dataset: dataset ? dataset.getElements() : null,
      callingAe: this.association.getCallingAeTitle(),
      calledAe: this.association.getCalledAeTitle(),
    });
    const response = NEventReportResponse.fromRequest(request);
    response.setStatus(Status.Success);
    callback(response);
  }

  associationReleaseRequested() {
    this.sendAssociationReleaseResponse();
    emit({ type: 'released' });
  }
}

const server = new Server(EventScu);
server.on('networkError', (e) => emit({ type: 'error', error: String(e) }));
server.listen(Number(port));
emit({ type: 'listening', port: Number(port) });
