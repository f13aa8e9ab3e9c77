// Interoperability tier: a modality played by dcmjs-dimse (not pynetdicom) on one association:
// Modality Worklist C-FIND for its station, then MPPS N-CREATE (IN PROGRESS, naming the
// scheduled step by its SPS ID), N-SET COMPLETED and N-GET. Prints one JSON object with every
// response; tests/test_interop_dcmjs.py judges it.
//
// usage: node modality_interop.js HOST PORT CALLED_AE CALLING_AE STATION SPS_ID MPPS_UID

'use strict';

const dcmjsDimse = require('dcmjs-dimse');

const { Client, Dataset, log } = dcmjsDimse;
const { CFindRequest, NCreateRequest, NSetRequest, NGetRequest } = dcmjsDimse.requests;

const MPPS = '1.2.840.10008.3.1.2.3.3';

const [host, port, calledAe, callingAe, station, spsId, mppsUid] = process.argv.slice(2);
if (!mppsUid) {
  console.error('usage: node modality_interop.js HOST PORT CALLED_AE CALLING_AE STATION SPS_ID MPPS_UID');
  process.exit(2);
}
log.setLevel('error');

const results = [];
function record(step, response, extra) {
  results.push({ step, status: response.getStatus(), comment: response.getErrorComment() || '',
                 ...(extra || {}) });
}

const client = new Client();

const find = CFindRequest.createWorklistFindRequest({
  PatientName: '',
  PatientID: '',
  AccessionNumber: '',
  StudyInstanceUID: '',
  ScheduledProcedureStepSequence: [
    {
      ScheduledStationAETitle: station,
      ScheduledProcedureStepStartDate: '20261125',
      ScheduledProcedureStepStartTime: '',
      ScheduledProcedureStepID: '',
      Modality: '',
    },
  ],
});
const matches = [];
find.on('response', (r) => {
  if (r.getStatus() === 0xff00 || r.getStatus() === 0xff01) {
    matches.push(r.hasDataset() ? r.getDataset().getElements() : {});
  } else {
    record('mwl-find', r, { matches });
  }
});
client.addRequest(find);

const create = new NCreateRequest(MPPS, mppsUid);
create.setDataset(new Dataset({
  ScheduledStepAttributesSequence: [{ ScheduledProcedureStepID: spsId }],
  PatientName: [{ Alphabetic: 'Interop^Modality' }],
  PerformedStationAETitle: station,
  PerformedProcedureStepStartDate: '20261125',
  PerformedProcedureStepStartTime: '101000',
  PerformedProcedureStepStatus: 'IN PROGRESS',
  PerformedProcedureStepID: 'PPS-DCMJS',
  Modality: 'CT',
}));
create.on('response', (r) => record('mpps-create', r));
client.addRequest(create);

const set = new NSetRequest(MPPS, mppsUid);
set.setDataset(new Dataset({
  PerformedProcedureStepStatus: 'COMPLETED',
  PerformedProcedureStepEndDate: '20261125',
  PerformedProcedureStepEndTime: '102000',
}));
set.on('response', (r) => record('mpps-completed', r));
client.addRequest(set);

const get = new NGetRequest(MPPS, mppsUid, ['PerformedProcedureStepStatus', 'PerformedProcedureStepID']);
get.on('response', (r) => record('mpps-get', r, {
  dataset: r.hasDataset() ? r.getDataset().getElements() : {},
}));
client.addRequest(get);

let finished = false;
function finish(error) {
  if (finished) return;
  finished = true;
  console.log(JSON.stringify({ error: error || null, results }));
  process.exit(0);
}

client.on('associationRejected', (r) => finish('association rejected: ' + JSON.stringify(r)));
client.on('networkError', (e) => finish('network error: ' + (e && e.message)));
client.on('closed', () => finish(null));
setTimeout(() => finish('timed out'), 30000).unref();

client.send(host, Number(port), callingAe, calledAe, {
  associationTimeout: 10000,
  pduTimeout: 10000,
});
