// A durable outbox for Agent Mesh clients written in JavaScript (Node >= 18, no dependencies).
//
// The repository's Node clients (tools.js, example-agent.js) POST a message and, when the
// server is unreachable, throw: the message is gone. This outbox gives them what meshd's
// Python SDK has: every outgoing message is appended to a local file (fsync'd) before any
// attempt to send it, carries a `clientId` chosen once, and is replayed in order until the
// server acknowledges it. meshd answers a repeated `clientId` from the same sender with the
// original message and delivers nothing twice, so a replay after a crash, a timeout or a
// partition is always safe.
//
//   import { openOutbox } from './mesh-outbox.mjs';
//   const outbox = openOutbox({ url: 'http://localhost:4000', apiKey: KEY, dir: '.mesh-outbox' });
//   await outbox.send(myId, otherId, 'hello');   // { queued: true } while the mesh is away
//   await outbox.flush();                        // replays in order; stops at the first failure
//
// The file holds one JSON object per line: {"op":"queued", ...message} when a message is
// accepted locally and {"op":"sent", clientId, messageId} when meshd acknowledged it. A line
// torn by a crash is cut off when the outbox is next opened. `compact()` rewrites the file
// with only what is still pending.

import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const FILE = 'outbox.jsonl';

function appendDurably(file, record) {
  const fd = fs.openSync(file, 'a');
  try {
    fs.writeSync(fd, JSON.stringify(record) + '\n');
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

// A crash mid-append can leave a last line without its newline; the next append would be glued
// to it and both lost. Cut the file back to its last complete line before writing again.
function repairTornTail(file) {
  if (!fs.existsSync(file)) return;
  const data = fs.readFileSync(file);
  if (data.length === 0 || data[data.length - 1] === 0x0a) return;
  fs.truncateSync(file, data.lastIndexOf(0x0a) + 1);
}

function readRecords(file) {
  if (!fs.existsSync(file)) return [];
  const records = [];
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    if (!line) continue;
    try {
      records.push(JSON.parse(line));
    } catch {
      // A line torn by a crash mid-append (cut at the next open): the message was never
      // acknowledged to the caller, so dropping it loses nothing that was promised.
    }
  }
  return records;
}

/** Messages queued and not yet acknowledged by meshd, oldest first. */
export function pendingMessages(file) {
  const sent = new Set();
  const queued = [];
  for (const record of readRecords(file)) {
    if (record.op === 'sent') sent.add(record.clientId);
    else if (record.op === 'queued') queued.push(record);
  }
  return queued.filter((record) => !sent.has(record.clientId));
}

export class OutboxError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

export function openOutbox({ url, apiKey, dir, timeoutMs = 10000, fetchImpl = fetch }) {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, FILE);
  repairTornTail(file);
  const headers = { 'Content-Type': 'application/json' };
  if (apiKey) headers['X-API-Key'] = apiKey;
  let flushing = null;

  // One attempt: the acknowledged message, or null when meshd could not be reached (network
  // error, timeout, 5xx). A 4xx is a message meshd will never take: it is reported and
  // dropped from the queue, so one bad message cannot block every later one.
  async function deliver(record) {
    let response;
    try {
      response = await fetchImpl(`${url}/api/messages`, {
        method: 'POST',
        headers,
        body: JSON.stringify({
          from: record.from, to: record.to, content: record.content,
          messageType: record.messageType, clientId: record.clientId,
        }),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch {
      return null;
    }
    if (response.status >= 500) return null;
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      appendDurably(file, { op: 'sent', clientId: record.clientId, rejected: response.status,
                            error: body.error ?? null });
      throw new OutboxError(body.error ?? `HTTP ${response.status}`, response.status);
    }
    appendDurably(file, { op: 'sent', clientId: record.clientId, messageId: body.messageId });
    return body;
  }

  async function flushOnce() {
    const results = [];
    for (const record of pendingMessages(file)) {
      let acknowledged;
      try {
        acknowledged = await deliver(record);
      } catch (error) {
        results.push({ clientId: record.clientId, rejected: error.status, error: error.message });
        continue;
      }
      if (acknowledged === null) return { delivered: results, remaining: pendingMessages(file).length };
      results.push({ clientId: record.clientId, messageId: acknowledged.messageId });
    }
    return { delivered: results, remaining: 0 };
  }

  return {
    file,

    /** Queue durably, then try to deliver everything pending in order (this one last). */
    async send(from, to, content, { messageType = 'direct', clientId = randomUUID() } = {}) {
      appendDurably(file, { op: 'queued', clientId, from, to, content, messageType,
                            queuedAt: new Date().toISOString() });
      const { delivered } = await this.flush();
      const mine = delivered.find((item) => item.clientId === clientId);
      if (mine?.rejected) throw new OutboxError(mine.error, mine.rejected);
      return mine ? { queued: false, clientId, messageId: mine.messageId }
                  : { queued: true, clientId };
    },

    /** Replay pending messages in order; stops at the first that cannot reach meshd. */
    flush() {
      // One flush at a time, so two callers never send the same message concurrently and
      // order per sender is kept.
      flushing = (flushing ?? Promise.resolve()).then(flushOnce, flushOnce);
      return flushing;
    },

    pending() {
      return pendingMessages(file);
    },

    /** Rewrite the file with only the pending messages (atomic rename). */
    compact() {
      const keep = pendingMessages(file);
      const temp = `${file}.tmp`;
      fs.writeFileSync(temp, keep.map((record) => JSON.stringify(record) + '\n').join(''));
      const fd = fs.openSync(temp, 'r');
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      fs.renameSync(temp, file);
      return keep.length;
    },
  };
}
