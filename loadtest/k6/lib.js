// Shared by the k6 scripts: settings from the environment, the open-model scenario, prompts with
// a chosen share of repeats (cache hits) and unique ones (cache misses: the classifier runs).

import exec from 'k6/execution';

export function env(name, fallback) {
  const v = __ENV[name];
  return v === undefined || v === '' ? fallback : v;
}

// Open model: requests arrive at a fixed rate whatever the latency (constant-arrival-rate), or
// ramp through stages (RAMP="100:10s,500:20s"); k6 adds VUs up to MAX_VUS to keep the schedule.
export function scenario(execName) {
  const rate = Number(env('RATE', 50));
  const maxVUs = Number(env('MAX_VUS', 200));
  const ramp = env('RAMP', '');
  if (ramp) {
    return {
      executor: 'ramping-arrival-rate',
      exec: execName,
      startRate: Number(env('START_RATE', 10)),
      timeUnit: '1s',
      preAllocatedVUs: Math.min(maxVUs, 50),
      maxVUs,
      stages: ramp.split(',').map((s) => {
        const [target, duration] = s.split(':');
        return { target: Number(target), duration };
      }),
    };
  }
  return {
    executor: 'constant-arrival-rate',
    exec: execName,
    rate,
    timeUnit: '1s',
    duration: env('DURATION', '30s'),
    preAllocatedVUs: Math.min(maxVUs, Math.max(10, Math.ceil(rate / 10))),
    maxVUs,
  };
}

// A few everyday prompts of different kinds (ours, not from any dataset).
const BASE = [
  'What is the capital of North Carolina?',
  'Solve for x: 3x + 7 = 22, and show each step.',
  'Write a short poem about the sea at night.',
  'Explain how a hash map handles collisions.',
  'Project the revenue of a shop growing 4% a month for two years.',
  'Summarise the causes of the First World War in three sentences.',
  'How do I reset my password on your website?',
  'Which vitamins are fat-soluble?',
];

// HIT_RATIO of the prompts repeat (after their first use, cache hits); the rest are unique.
export function prompt() {
  const hit = Number(env('HIT_RATIO', 0.9));
  const it = exec.scenario.iterationInTest;
  const base = BASE[it % BASE.length];
  if (Math.random() < hit) {
    return base;
  }
  return `${base} (request ${exec.vu.idInTest}-${it}-${Math.floor(Math.random() * 1e9)})`;
}

export function thresholds(extra) {
  return Object.assign(
    {
      http_req_failed: ['rate<0.01'],
      http_req_duration: [`p(99)<${env('P99_MS', 500)}`],
      checks: ['rate>0.99'],
    },
    extra || {},
  );
}
