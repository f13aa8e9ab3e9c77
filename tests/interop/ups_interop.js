// Interoperability tier: drive the gateway's DIMSE UPS SCP with dcmjs-dimse, a DIMSE
// implementation that is not pynetdicom. One association: N-CREATE (with and without a UID),
// N-GET, N-ACTION claim (Push UID in the message, Pull presentation context), a second claim,
// C-FIND on the Pull and Query contexts, and two refusals. Prints one JSON object with every
// response's status; tests/test_interop_dcmjs.py judges it.
//
// usage: node ups_interop.js HOST PORT CALLED_AE [CALLING_AE]

'use strict';

const crypto = require('crypto');
const dcmjsDimse = require('dcmjs-dimse');

const { Client, Dataset, log } = dcmjsDimse;
const { NCreateRequest, NGetRequest, NActionRequest, CFindRequest } = dcmjsDimse.requests;

const PUSH = '1.2.840.10008.5.1.4.34.6.1';
const PULL = '1.2.840.10008.5.1.4.34.6.3';
const QUERY = '1.2.840.10008.5.1.4.34.6.5';

const [host, port, calledAe, callingAe] = process.argv.slice(2);
if (!host || !port || !calledAe) {
  console.error('usage: node ups_interop.js HOST PORT CALLED_AE [CALLING_AE]');
  process.exit(2);
}
log.setLevel('error');

function newUid() {
  return '2.25.' + BigInt('0x' + crypto.randomBytes(16).toString('hex')).toString();
}

const uid = newUid();
const tx = newUid();
const label = 'DCMJS-' + uid.slice(-8);

function workitem(worklistLabel) {
  return {
    ProcedureStepState: 'SCHEDULED',
    ScheduledProcedureStepPriority: 'HIGH',
    ProcedureStepLabel: 'dcmjs interop',
    WorklistLabel: worklistLabel,
    ScheduledProcedureStepStartDateTime: '20261125100000',
    InputReadinessState: 'READY',
    PatientName: [{ Alphabetic: 'Interop^Dcmjs' }],
    PatientID: 'DCMJS-1',
    TransactionUID: '',
    ScheduledStationNameCodeSequence: [
      { CodeValue: 'NODE1', CodingSchemeDesignator: '99LOCAL', CodeMeaning: 'Node station' },
    ],
  };
}

const results = [];

function record(step, response, extra) {
  const entry = {
    step,
    status: response.getStatus(),
    comment: response.getErrorComment() || '',
    ...(extra || {}),
  };
  results.push(entry);
  return entry;
}

const client = new Client();

const create = new NCreateRequest(PUSH, uid);
create.setDataset(new Dataset(workitem(label)));
create.on('response', (r) => record('n-create', r));
client.addRequest(create);

const createNoUid = new NCreateRequest(PUSH, undefined);
createNoUid.setDataset(new Dataset(workitem(label + '-ASSIGNED')));
createNoUid.on('response', (r) =>
  record('n-create-assign', r, { uid: r.getAffectedSopInstanceUid() || '' })
);
client.addRequest(createNoUid);

const get = new NGetRequest(PUSH, uid, [
  'ProcedureStepState',
  'WorklistLabel',
  'PatientName',
  'TransactionUID',
]);
get.on('response', (r) => {
  const ds = r.hasDataset() ? r.getDataset().getElements() : {};
  record('n-get', r, { dataset: ds });
});
client.addRequest(get);

function claimRequest(transactionUid) {
  // The message carries the UPS Push SOP Class UID; the presentation context is UPS Pull.
  const request = new NActionRequest(PUSH, uid, 1, PULL);
  request.setDataset(
    new Dataset({ ProcedureStepState: 'IN PROGRESS', TransactionUID: transactionUid })
  );
  return request;
}

const claim = claimRequest(tx);
claim.on('response', (r) => record('n-action-claim', r, { actionTypeId: r.getActionTypeId() }));
client.addRequest(claim);

const claimAgain = claimRequest(newUid());
claimAgain.on('response', (r) => record('n-action-claim-again', r));
client.addRequest(claimAgain);

function findRequest(sopClass, elements, step) {
  const request = new CFindRequest();
  request.setAffectedSopClassUid(sopClass);
  request.setDataset(new Dataset(elements));
  const matches = [];
  request.on('response', (r) => {
    if (r.getStatus() === 0xff00 || r.getStatus() === 0xff01) {
      matches.push(r.hasDataset() ? r.getDataset().getElements() : {});
    } else {
      record(step, r, { matches });
    }
  });
  return request;
}

client.addRequest(
  findRequest(
    PULL,
    { WorklistLabel: label, SOPInstanceUID: '', ProcedureStepState: '', PatientName: '' },
    'c-find-pull'
  )
);
client.addRequest(
  findRequest(QUERY, { SOPInstanceUID: uid, WorklistLabel: '', ProcedureStepState: '' }, 'c-find-query')
);
client.addRequest(
  findRequest(PULL, { QueryRetrieveLevel: 'STUDY', PatientID: '' }, 'c-find-wrong-identifier')
);

const getUnknown = new NGetRequest(PUSH, newUid(), []);
getUnknown.on('response', (r) => record('n-get-unknown', r));
client.addRequest(getUnknown);

let finished = false;
function finish(error) {
  if (finished) return;
  finished = true;
  console.log(JSON.stringify({ uid, tx, label, error: error || null, results }));
  process.exit(0);
}

client.on('associationRejected', (r) => finish('association rejected: ' + JSON.stringify(r)));
client.on('networkError', (e) => finish('network error: ' + (e && e.message)));
client.on('closed', () => finish(null));
setTimeout(() => finish('timed out'), 30000).unref();

client.send(host, Number(port), callingAe || 'DCMJS_SCU', calledAe, {
  associationTimeout: 10000,
  pduTimeout: 10000,
});
