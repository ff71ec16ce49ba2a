// classifier-svc's gRPC API (k6/net/grpc), open model: Classify with one text per call (what
// router-svc sends) for every loaded task.
//   k6 run loadtest/k6/classifier_grpc.js                      # 50 calls/s for 30 s
//   k6 run -e RATE=300 -e ADDR=127.0.0.1:50051 loadtest/k6/classifier_grpc.js
// Env: ADDR (127.0.0.1:50051), TASKS (comma-separated; empty = all), RATE, DURATION, RAMP,
// MAX_VUS, HIT_RATIO (only varies the texts), P99_MS (500).
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { env, scenario, prompt } from './lib.js';

const client = new grpc.Client();
client.load(['../../proto/proto'], 'semroute/classifier/v1/classifier.proto');

export const options = {
  scenarios: { classify: scenario('classify') },
  thresholds: {
    checks: ['rate>0.99'],
    grpc_req_duration: [`p(99)<${env('P99_MS', 500)}`],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
};

const TASKS = env('TASKS', '').split(',').filter((t) => t !== '');
let connected = false;

export function classify() {
  if (!connected) {
    client.connect(env('ADDR', '127.0.0.1:50051'), { plaintext: true, timeout: '5s' });
    connected = true;
  }
  const res = client.invoke(
    'semroute.classifier.v1.Classifier/Classify',
    { texts: [prompt()], tasks: TASKS },
    { timeout: '5s' },
  );
  check(res, {
    'status OK': (r) => r && r.status === grpc.StatusOK,
    'one result': (r) => r && r.message && r.message.results.length === 1,
  });
}
