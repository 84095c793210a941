// 1:1 chat across nodes at a fixed rate; no message may be lost or
// delivered twice. See README.md for the environment variables.
import * as chat from './lib/chat.js';

const c = chat.config({ vus: 20, rate: 200, warmup: '2s', duration: '10s', drain: '3s', p99: 500 });

export const options = chat.options(c, {
  sb_duplicates: ['count==0'],
  sb_send_errors: ['count==0'],
  sb_closes_1012: ['count==0'],
  sb_closes_other: ['count==0'],
  sb_connect_failures: ['count==0'],
});

export const setup = chat.setup;

export default function (data) {
  chat.run(data, c);
}

export function handleSummary(data) {
  return chat.summary(data, 'chat', c, { noDuplicates: true });
}
