// The browser-free parts of the page script (flask_tidings/static/tidings-core.js), with node's own
// test runner: `node --test tests/js/` (run by `make test`).
"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const core = require("../../flask_tidings/static/tidings-core.js");

test("backoff has full jitter: anywhere from 0 to the capped exponential", () => {
  assert.equal(core.backoff(0, 1000, 30000, () => 0), 0);
  assert.equal(core.backoff(0, 1000, 30000, () => 0.999), 999);
  assert.equal(core.backoff(3, 1000, 30000, () => 0.5), 4000);
  assert.equal(core.backoff(20, 1000, 30000, () => 0.999), 29970, "capped");
  const spread = new Set(Array.from({ length: 200 }, () => core.backoff(4, 1000, 30000)));
  assert.ok(spread.size > 150, "browsers cut off together come back spread out");
});

test("the cursor only moves forward", () => {
  const cursor = new core.Cursor("41");
  assert.equal(cursor.advance(42), true);
  assert.equal(cursor.advance("40"), false);
  assert.equal(cursor.advance("nonsense"), false);
  assert.equal(cursor.id, 42);
});

test("a tab handles each stored notification once, ephemeral ones each time", () => {
  // The kinds as the page gets them (data-event-kinds): name -> its `per` field, or null.
  const seen = new core.Seen({ unread_message_count: null, task_progress: "task_id" });
  const count = (id, data) => ({ id, name: "unread_message_count", data });
  assert.equal(seen.admit(count(5, 1)), true);
  assert.equal(seen.admit(count(5, 1)), false, "the same event relayed and replayed");
  assert.equal(seen.admit(count(4, 0)), false, "older than what this tab showed");
  assert.equal(seen.admit(count(7, 2)), true);
  const progress = (id, task) => ({ id, name: "task_progress", data: { task_id: task } });
  assert.equal(seen.admit(progress(6, "a")), true, "kept per task, not per name");
  assert.equal(seen.admit(progress(3, "b")), true);
  const ephemeral = { name: "announcement", data: "hi" };
  assert.equal(seen.admit(ephemeral), true);
  assert.equal(seen.admit(ephemeral), true);
});

test("keys follow each declared kind's per field, as the server's Kind.key does", () => {
  const kinds = { task_progress: "task_id", deploy_done: "service", count: null };
  assert.equal(core.keyOf({ name: "task_progress", data: { task_id: "t1" } }, kinds), "task_progress:t1");
  assert.equal(core.keyOf({ name: "deploy_done", data: { service: "api" } }, kinds), "deploy_done:api");
  assert.equal(core.keyOf({ name: "deploy_done", data: "not an object" }, kinds), "deploy_done");
  assert.equal(core.keyOf({ name: "count", data: { task_id: "t1" } }, kinds), "count");
  assert.equal(core.keyOf({ name: "undeclared", data: { task_id: "t1" } }, kinds), "undeclared");
});

test("the watchdog expires when the leader stops beating", () => {
  let now = 1000;
  const dog = new core.Watchdog(3500, () => now);
  now += 3000;
  assert.equal(dog.expired(), false);
  dog.beat();
  now += 3400;
  assert.equal(dog.expired(), false);
  now += 200;
  assert.equal(dog.expired(), true);
});

// A Web Locks API for one name: an exclusive lock with a queue, release on the holder's
// promise settling, and steal (the holder's request rejects with AbortError).
class FakeLocks {
  constructor() {
    this.holder = null;
    this.queue = [];
  }
  request(name, options, callback) {
    return new Promise((resolve, reject) => {
      const req = { callback, resolve, reject };
      if (options.steal && this.holder) {
        const old = this.holder;
        this.holder = null;
        old.reject(Object.assign(new Error("stolen"), { name: "AbortError" }));
        this.grant(req);
      } else if (this.holder) this.queue.push(req);
      else this.grant(req);
    });
  }
  grant(req) {
    this.holder = req;
    Promise.resolve(req.callback()).then((value) => {
      if (this.holder !== req) return;
      this.holder = null;
      req.resolve(value);
      const next = this.queue.shift();
      if (next) this.grant(next);
    });
  }
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

function tab(locks, log, name) {
  const election = new core.Election(
    locks,
    "tidings-stream:1-abc",
    () => log.push(`${name} leads`),
    () => log.push(`${name} follows`)
  );
  election.start();
  return election;
}

test("one tab leads; when it goes, the next one in line leads at once", async () => {
  const locks = new FakeLocks();
  const log = [];
  const a = tab(locks, log, "a");
  const b = tab(locks, log, "b");
  const c = tab(locks, log, "c");
  await tick();
  assert.deepEqual(log, ["a leads"]);
  assert.ok(a.leading && !b.leading && !c.leading);
  a.resign();
  await tick();
  await tick();
  assert.deepEqual(log, ["a leads", "b leads"]);
  assert.ok(b.leading && !c.leading);
});

test("a follower steals from a frozen leader, which follows when it wakes", async () => {
  const locks = new FakeLocks();
  const log = [];
  const a = tab(locks, log, "a");
  const b = tab(locks, log, "b");
  await tick();
  b.steal();
  await tick();
  await tick();
  assert.deepEqual(log, ["a leads", "b leads", "a follows"]);
  assert.ok(b.leading && !a.leading, "exactly one leader");
  b.resign();
  await tick();
  await tick();
  assert.ok(a.leading, "the old leader queued again and leads once b goes");
});

test("sharing needs both Web Locks and BroadcastChannel", () => {
  const locks = { request() {} };
  assert.equal(core.canShare({ navigator: { locks }, BroadcastChannel: function () {} }), true);
  assert.equal(core.canShare({ navigator: {}, BroadcastChannel: function () {} }), false);
  assert.equal(core.canShare({ navigator: { locks } }), false);
});
