// Chat completions through router-svc (or any OpenAI-compatible URL), open model.
//   k6 run loadtest/k6/chat.js                        # 50 req/s for 30 s, 90 % repeated prompts
//   k6 run -e RATE=2000 -e DURATION=60s -e HIT_RATIO=1 loadtest/k6/chat.js
//   k6 run -e STREAM=1 loadtest/k6/chat.js             # SSE; time to first byte as ttft_ms
//   k6 run -e RAMP=100:10s,1000:30s,1000:30s loadtest/k6/chat.js
// Env: BASE_URL (http://127.0.0.1:8080) or BASE_URLS (comma-separated replicas, taken in turn
// per request, as a round-robin load balancer would), MODEL (auto), MAX_TOKENS (16), RATE, DURATION, RAMP,
// START_RATE, MAX_VUS, HIT_RATIO (0.9), STREAM (0), P99_MS (500: the p99 threshold that gates the
// exit code, with http_req_failed < 1 %).
import http from 'k6/http';
import exec from 'k6/execution';
import { check } from 'k6';
import { Trend, Counter } from 'k6/metrics';
import { env, scenario, prompt, thresholds } from './lib.js';

const BASE_URLS = env('BASE_URLS', env('BASE_URL', 'http://127.0.0.1:8080')).split(',');
function url() {
  const i = exec.scenario.iterationInTest % BASE_URLS.length;
  return `${BASE_URLS[i]}/v1/chat/completions`;
}
const STREAM = env('STREAM', '0') === '1';
const ttft = new Trend('ttft_ms', true);
const cacheHits = new Counter('router_cache_hits');

export const options = {
  scenarios: { chat: scenario(STREAM ? 'stream' : 'plain') },
  thresholds: thresholds(STREAM ? { ttft_ms: [`p(99)<${env('TTFT_P99_MS', 500)}`] } : {}),
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
};

function body(stream) {
  return JSON.stringify({
    model: env('MODEL', 'auto'),
    messages: [{ role: 'user', content: prompt() }],
    max_tokens: Number(env('MAX_TOKENS', 16)),
    stream,
  });
}

const params = { headers: { 'Content-Type': 'application/json' }, timeout: '60s' };

function countHit(res) {
  if (res.headers['X-Vsr-Cache-Hit'] === 'true') {
    cacheHits.add(1);
  }
}

export function plain() {
  const res = http.post(url(), body(false), params);
  countHit(res);
  check(res, {
    'status 200': (r) => r.status === 200,
    'has a choice': (r) => r.status === 200 && r.json('choices.0.message') !== undefined,
  });
}

export function stream() {
  const res = http.post(url(), body(true), params);
  countHit(res);
  // k6 reads the whole body; the wait until its first byte is the stream's first event (the
  // router sends headers with the first upstream chunk), so it stands for time to first token.
  ttft.add(res.timings.waiting);
  check(res, {
    'status 200': (r) => r.status === 200,
    'event stream': (r) => (r.headers['Content-Type'] || '').startsWith('text/event-stream'),
    'ends with [DONE]': (r) => typeof r.body === 'string' && r.body.trim().endsWith('data: [DONE]'),
  });
}
