// A Turnout replica in Node.js: serves turnout.v1.ReplicaService (Handle,
// HandleStream, Reconfigure) and grpc.health.v1.Health as
// docs/replica-protocol.md describes, around a handler module.
//
//   node replica.js [HANDLER.js]     (default: ./echo.js, the conformance handler)
//
// Started by a Turnout controller as a command backend, it reads what it needs
// from the environment (TURNOUT_READY_FD, TURNOUT_HOST, TURNOUT_REPLICA_ID,
// TURNOUT_BACKEND_CONFIG, TURNOUT_USER_CONFIG, TURNOUT_CREDENTIALS_FILE,
// TURNOUT_TLS_*), binds a port of its own choosing and reports it on the
// readiness descriptor as one JSON line.
//
// A handler module exports `handle(request, context)`, async, returning
// {status, headers: [{name, value}], body: Buffer}; `request` is the
// turnout.v1.HttpRequest (body a Buffer), `context` is {signal, requestId,
// methodName}: `signal` aborts when the caller stops waiting. It may export
// `reconfigure(userConfig)` too.
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.resolve(__dirname, "..", "..", "protos");
const HEALTH_PROTOS = path.resolve(__dirname, "protos");
const REPLICA_SERVICE = "turnout.v1.ReplicaService";
// After SIGTERM: no call open for this long, and the server stops accepting.
const DRAIN_QUIET_MS = 200;
const DEFAULT_GRACE_S = 20;
const OWNER_POLL_MS = 1000;

const definition = protoLoader.loadSync(
  ["turnout/v1/replica.proto", "grpc/health/v1/health.proto"],
  {
    includeDirs: [PROTOS, HEALTH_PROTOS],
    keepCase: true,
    // Call ids are uint64: as strings, so that ids beyond 2**53 survive.
    longs: String,
    enums: String,
    defaults: false,
    oneofs: true,
  },
);
const loaded = grpc.loadPackageDefinition(definition);
const ReplicaService = loaded.turnout.v1.ReplicaService.service;
const HealthService = loaded.grpc.health.v1.Health.service;

function log(...parts) {
  const id = process.env.TURNOUT_REPLICA_ID || "-";
  console.error(new Date().toISOString(), `replica ${id}`, ...parts);
}

// ---- readiness ------------------------------------------------------------------

function report(payload) {
  const text = JSON.stringify(payload) + "\n";
  const fd = process.env.TURNOUT_READY_FD;
  if (fd === undefined || fd === "") {
    process.stdout.write(text);
    return;
  }
  const descriptor = Number(fd);
  try {
    fs.writeSync(descriptor, text);
  } finally {
    fs.closeSync(descriptor);
  }
}

function giveUp(code, message) {
  log(`cannot start: ${code}: ${message}`);
  report({ ok: false, code, message });
  process.exit(1);
}

// ---- credentials ----------------------------------------------------------------

// token -> Set of roles; null = no file, no checks (started by hand).
function loadCredentials() {
  const file = process.env.TURNOUT_CREDENTIALS_FILE;
  if (!file) return null;
  const mode = fs.statSync(file).mode;
  if (mode & 0o077) {
    throw new Error(`${file} is accessible by group or others; it holds secrets`);
  }
  const body = JSON.parse(fs.readFileSync(file, "utf8"));
  const accept = new Map();
  for (const [token, roles] of Object.entries(body.accept || {})) {
    accept.set(token, new Set(roles));
  }
  return accept;
}

function bearer(metadata) {
  const values = metadata.get("authorization");
  if (!values.length) return null;
  const text = String(values[0]);
  return text.startsWith("Bearer ") ? text.slice("Bearer ".length).trim() : null;
}

// A gRPC status error, or null when the caller may call a method needing `role`.
function refusal(accept, metadata, method, role) {
  if (accept === null) return null;
  const token = bearer(metadata);
  const roles = token === null ? undefined : accept.get(token);
  if (roles === undefined) {
    return {
      code: grpc.status.UNAUTHENTICATED,
      details: `${method} on this replica needs a token: 'authorization: Bearer <token>'`,
    };
  }
  if (!roles.has(role)) {
    return {
      code: grpc.status.PERMISSION_DENIED,
      details: `${method} needs the ${role} role, which this token does not grant`,
    };
  }
  return null;
}

// ---- answers --------------------------------------------------------------------

function jsonResponse(status, payload) {
  return {
    status,
    headers: [{ name: "Content-Type", value: "application/json" }],
    body: Buffer.from(JSON.stringify(payload)),
  };
}

function errorResponse(status, name, message, requestId) {
  return jsonResponse(status, { error: name, message, request_id: requestId });
}

// At most `limit` handler calls at once (max_concurrent_queries); the rest wait.
class Limiter {
  constructor(limit) {
    this.limit = limit;
    this.running = 0;
    this.waiting = [];
  }

  async run(work) {
    if (this.running >= this.limit) {
      // The call that ends hands its slot over.
      await new Promise((resolve) => this.waiting.push(resolve));
    } else {
      this.running += 1;
    }
    try {
      return await work();
    } finally {
      if (this.waiting.length && this.running <= this.limit) this.waiting.shift()();
      else this.running -= 1;
    }
  }

  resize(limit) {
    this.limit = limit;
    while (this.waiting.length && this.running < this.limit) {
      this.running += 1;
      this.waiting.shift()();
    }
  }
}

class NoPayload extends Error {}

class Replica {
  constructor(handler, config) {
    this.handler = handler;
    this.limiter = new Limiter(config.max_concurrent_queries || 100);
    this.open = 0;
    this.quietSince = Date.now();
  }

  // The HandleResponse for one HandleRequest; throws NoPayload.
  async respond(request, signal) {
    if (request.payload === "call") {
      return {
        error: {
          kind: "ERROR_KIND_USER",
          type: "NotImplementedError",
          message: "this replica (Node.js) serves HTTP requests only, not Python calls",
          traceback: "",
        },
      };
    }
    if (request.payload !== "http") throw new NoPayload();
    const rid = request.request_id || "";
    const method = request.method_name || "";
    if (method !== "" && method !== "__call__") {
      return {
        http: errorResponse(404, "MethodNotFound", `no method ${JSON.stringify(method)}`, rid),
      };
    }
    return this.limiter.run(async () => {
      try {
        const answer = await this.handler.handle(request.http, {
          signal,
          requestId: rid,
          methodName: method,
        });
        return { http: answer };
      } catch (error) {
        if (signal.aborted) throw error;
        log(`request ${rid}: handler raised`, error && error.stack ? error.stack : error);
        const name = (error && error.name) || "Error";
        return { http: errorResponse(500, name, String((error && error.message) || error), rid) };
      }
    });
  }

  counted(promise) {
    this.open += 1;
    return promise.finally(() => {
      this.open -= 1;
      if (this.open === 0) this.quietSince = Date.now();
    });
  }

  handle(call, callback) {
    const controller = new AbortController();
    call.on("cancelled", () => controller.abort());
    const deadline = call.getDeadline();
    const ms = deadline instanceof Date ? deadline.getTime() - Date.now() : Infinity;
    if (ms <= 0) {
      callback({ code: grpc.status.DEADLINE_EXCEEDED, details: "deadline passed before start" });
      return;
    }
    this.counted(
      this.respond(call.request, controller.signal).then(
        (answer) => callback(null, answer),
        (error) => {
          if (error instanceof NoPayload) {
            callback({ code: grpc.status.INVALID_ARGUMENT, details: "HandleRequest has no payload" });
          } else if (controller.signal.aborted) {
            callback({ code: grpc.status.CANCELLED, details: "cancelled" });
          } else {
            callback({ code: grpc.status.INTERNAL, details: String(error) });
          }
        },
      ),
    );
  }

  handleStream(call) {
    // id -> AbortController of each call still running
    const running = new Map();
    let outbox = [];
    let flushing = false;
    let reading = true;
    let done;
    const finished = new Promise((resolve) => (done = resolve));

    const maybeEnd = () => {
      if (!reading && running.size === 0 && outbox.length === 0) {
        call.end();
        done();
      }
    };
    // Whatever answers are ready when the event loop comes round go as one message.
    const flush = () => {
      flushing = false;
      if (outbox.length) {
        const answers = outbox;
        outbox = [];
        call.write({ answers });
      }
      maybeEnd();
    };
    const answer = (entry) => {
      outbox.push(entry);
      if (!flushing) {
        flushing = true;
        setImmediate(flush);
      }
    };
    const start = (streamCall) => {
      const id = streamCall.id;
      const controller = new AbortController();
      running.set(id, controller);
      let timer = null;
      let timedOut = false;
      if (streamCall.timeout > 0) {
        timer = setTimeout(() => {
          timedOut = true;
          controller.abort();
        }, streamCall.timeout * 1000);
      }
      const request = streamCall.request || {};
      this.respond(request, controller.signal).then(
        (response) => ({ id, response }),
        (error) => {
          if (error instanceof NoPayload) return { id, failure: "CALL_FAILURE_INVALID_ARGUMENT" };
          return null;
        },
      ).then((entry) => {
        if (timer !== null) clearTimeout(timer);
        running.delete(id);
        if (timedOut) {
          answer({ id, failure: "CALL_FAILURE_DEADLINE_EXCEEDED" });
        } else if (entry !== null && !controller.signal.aborted) {
          answer(entry);
        } else {
          // Cancelled by the sender: nobody waits for an answer.
          maybeEnd();
        }
      });
    };

    call.on("data", (message) => {
      for (const id of message.cancelled_ids || []) {
        const controller = running.get(String(id));
        if (controller) controller.abort();
      }
      for (const streamCall of message.calls || []) start(streamCall);
    });
    call.on("end", () => {
      reading = false;
      maybeEnd();
    });
    call.on("cancelled", () => {
      reading = false;
      for (const controller of running.values()) controller.abort();
      done();
    });
    call.on("error", () => {
      for (const controller of running.values()) controller.abort();
      done();
    });
    this.counted(finished);
  }

  reconfigure(request) {
    const limit = request.max_concurrent_queries;
    if (limit !== undefined && limit !== null && limit < 1) {
      throw new Error("max_concurrent_queries must be >= 1");
    }
    const batch = request.max_batch_size;
    if (batch !== undefined && batch !== null && batch !== 1) {
      throw new Error("this replica does not batch: max_batch_size must be 1");
    }
    const wait = request.batch_wait_timeout;
    if (wait !== undefined && wait !== null && !(wait >= 0 && Number.isFinite(wait))) {
      throw new Error("batch_wait_timeout must be a finite number >= 0");
    }
    if (request.user_config_json) {
      let userConfig;
      try {
        userConfig = JSON.parse(request.user_config_json);
      } catch (error) {
        throw new Error(`user_config_json is not valid JSON: ${error.message}`);
      }
      if (typeof this.handler.reconfigure !== "function") {
        throw new Error("a user_config was given but the handler has no reconfigure()");
      }
      this.handler.reconfigure(userConfig);
    }
    if (limit !== undefined && limit !== null) this.limiter.resize(limit);
  }

  // Resolves once no call has been open for DRAIN_QUIET_MS, or after graceMs.
  async drain(graceMs) {
    const end = Date.now() + graceMs;
    while (Date.now() < end) {
      if (this.open === 0 && Date.now() - this.quietSince >= DRAIN_QUIET_MS) return;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

// ---- health ---------------------------------------------------------------------

class Health {
  constructor() {
    this.statuses = new Map([
      ["", "SERVING"],
      [REPLICA_SERVICE, "SERVING"],
    ]);
    this.watchers = new Set();
  }

  notServing() {
    for (const service of this.statuses.keys()) this.statuses.set(service, "NOT_SERVING");
    for (const watcher of this.watchers) watcher();
  }

  check(call, callback) {
    const status = this.statuses.get(call.request.service || "");
    if (status === undefined) {
      callback({ code: grpc.status.NOT_FOUND, details: "unknown service" });
      return;
    }
    callback(null, { status });
  }

  watch(call) {
    const service = call.request.service || "";
    let last = null;
    const send = () => {
      const status = this.statuses.get(service) || "SERVICE_UNKNOWN";
      if (status !== last) {
        last = status;
        call.write({ status });
      }
    };
    this.watchers.add(send);
    call.on("cancelled", () => this.watchers.delete(send));
    send();
  }
}

// ---- the process ----------------------------------------------------------------

function serverCredentials() {
  const cert = process.env.TURNOUT_TLS_CERT;
  const key = process.env.TURNOUT_TLS_KEY;
  if (!cert || !key) return grpc.ServerCredentials.createInsecure();
  const ca = process.env.TURNOUT_TLS_CA;
  return grpc.ServerCredentials.createSsl(
    ca ? fs.readFileSync(ca) : null,
    [{ private_key: fs.readFileSync(key), cert_chain: fs.readFileSync(cert) }],
    Boolean(ca),
  );
}

function exitWith(pidText, what) {
  // Node cannot ask the kernel for a signal when its parent dies: poll.
  const pid = Number(pidText);
  if (!pidText || !Number.isInteger(pid)) return;
  setInterval(() => {
    let alive = true;
    try {
      process.kill(pid, 0);
    } catch (error) {
      alive = error.code === "EPERM";
    }
    if (!alive || (what === "parent" && process.ppid !== pid)) {
      log(`the ${what} (pid ${pid}) is gone; stopping`);
      process.kill(process.pid, "SIGTERM");
    }
  }, OWNER_POLL_MS).unref();
}

function main() {
  exitWith(process.env.TURNOUT_PARENT_PID, "parent");
  exitWith(process.env.TURNOUT_OWNER_PID, "owner");
  let accept;
  let config;
  let handler;
  try {
    accept = loadCredentials();
    config = JSON.parse(process.env.TURNOUT_BACKEND_CONFIG || "{}");
    const handlerPath = path.resolve(process.argv[2] || path.join(__dirname, "echo.js"));
    handler = require(handlerPath);
    if ((config.max_batch_size || 1) > 1) {
      throw new Error("this replica does not batch: max_batch_size must be 1");
    }
    const userConfig = process.env.TURNOUT_USER_CONFIG;
    if (userConfig) {
      if (typeof handler.reconfigure !== "function") {
        throw new Error("a user_config was given but the handler has no reconfigure()");
      }
      handler.reconfigure(JSON.parse(userConfig));
    }
  } catch (error) {
    giveUp("INVALID_ARGUMENT", String(error.message || error));
  }

  const replica = new Replica(handler, config);
  const health = new Health();
  const server = new grpc.Server({
    "grpc.max_receive_message_length": -1,
    "grpc.max_send_message_length": -1,
  });
  const guard = (method, role, serve, deny) => (call, callback) => {
    const refused = refusal(accept, call.metadata, method, role);
    if (refused === null) return serve(call, callback);
    return deny(call, callback, refused);
  };
  const denyUnary = (call, callback, refused) => callback(refused);
  const denyStream = (call, callback, refused) => call.emit("error", refused);
  server.addService(ReplicaService, {
    Handle: guard("Handle", "data", (call, cb) => replica.handle(call, cb), denyUnary),
    HandleStream: guard("HandleStream", "data", (call) => replica.handleStream(call), denyStream),
    Reconfigure: guard(
      "Reconfigure",
      "control",
      (call, callback) => {
        try {
          replica.reconfigure(call.request);
          log("reconfigured");
          callback(null, {});
        } catch (error) {
          callback({ code: grpc.status.INVALID_ARGUMENT, details: error.message });
        }
      },
      denyUnary,
    ),
  });
  server.addService(HealthService, {
    Check: (call, callback) => health.check(call, callback),
    Watch: (call) => health.watch(call),
  });

  const host = process.env.TURNOUT_HOST || "127.0.0.1";
  const bindHost = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  server.bindAsync(`${bindHost}:0`, serverCredentials(), (error, port) => {
    if (error) giveUp("UNAVAILABLE", `cannot bind ${host}: ${error.message}`);
    const address = `${bindHost}:${port}`;
    log(`serving on ${address} (pid ${process.pid})`);
    report({
      ok: true,
      address,
      pid: process.pid,
      capabilities: { batch_methods: [], reconfigure: typeof handler.reconfigure === "function" },
    });
  });

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    const grace = config.graceful_shutdown_timeout ?? DEFAULT_GRACE_S;
    log(`shutting down; in-flight requests get ${grace} s`);
    health.notServing();
    const began = Date.now();
    await replica.drain(grace * 1000);
    const left = Math.max(0, grace * 1000 - (Date.now() - began));
    const force = setTimeout(() => server.forceShutdown(), left);
    server.tryShutdown(() => {
      clearTimeout(force);
      log("stopped");
      process.exit(0);
    });
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

if (require.main === module) main();

module.exports = { Replica, Health };
