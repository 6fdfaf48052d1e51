// The conformance handler (docs/replica-protocol.md, "The conformance
// handler") in Node.js: what `turnout replica-check` expects a replica to
// serve. The Python one is turnout/_conformance/echo.py.
"use strict";

// Keys of /sleep calls remembered for /probe; older ones are forgotten.
const MAX_KEYS = 1024;
const calls = new Map();
let userConfig = null;

function remember(key, state) {
  if (!key) return;
  calls.delete(key);
  calls.set(key, state);
  while (calls.size > MAX_KEYS) calls.delete(calls.keys().next().value);
}

function header(request, name) {
  const found = (request.headers || []).find((h) => h.name.toLowerCase() === name);
  return found === undefined ? undefined : found.value;
}

function json(value) {
  return {
    status: 200,
    headers: [{ name: "Content-Type", value: "application/json" }],
    body: Buffer.from(JSON.stringify(value)),
  };
}

function sleep(seconds, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, seconds * 1000);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new Error("cancelled"));
    });
  });
}

function decoded(path) {
  try {
    return decodeURIComponent(path);
  } catch {
    return path;
  }
}

async function handle(request, { signal }) {
  const path = decoded(request.path || "/");
  const query = new URLSearchParams(request.query_string || "");
  // By the end of the path, so that it answers alike behind any route.
  const parts = path.split("/");
  const last = parts[parts.length - 1];
  const parent = parts.length > 1 ? parts[parts.length - 2] : "";
  if (last === "sleep") {
    const key = query.get("key") || "";
    remember(key, "running");
    try {
      await sleep(Number(query.get("s") || "0"), signal);
    } catch (error) {
      remember(key, "cancelled");
      throw error;
    }
    remember(key, "finished");
    return {
      status: 200,
      headers: [{ name: "Content-Type", value: "text/plain; charset=utf-8" }],
      body: Buffer.from(key),
    };
  }
  if (last === "probe") return json({ state: calls.get(query.get("key") || "") || "unknown" });
  if (parent === "status" && /^[0-9]+$/.test(last)) {
    return { status: Number(last), headers: [], body: Buffer.alloc(0) };
  }
  if (last === "fail") throw new Error("the conformance handler failed on purpose");
  if (last === "cookies") {
    const count = Number(query.get("n") || "1");
    const headers = [];
    for (let i = 1; i <= count; i++) headers.push({ name: "Set-Cookie", value: `c${i}=${i}` });
    return { status: 200, headers, body: Buffer.alloc(0) };
  }
  if (last === "config") return json({ user_config: userConfig });
  const headers = [
    {
      name: "Content-Type",
      value: header(request, "content-type") || "application/octet-stream",
    },
    { name: "X-Seen-Method", value: request.method || "GET" },
    { name: "X-Seen-Path", value: path },
    { name: "X-Seen-Query", value: request.query_string || "" },
  ];
  for (const h of request.headers || []) {
    if (h.name.toLowerCase().startsWith("x-echo-")) headers.push({ name: h.name, value: h.value });
  }
  return { status: 200, headers, body: request.body || Buffer.alloc(0) };
}

function reconfigure(config) {
  userConfig = config;
}

module.exports = { handle, reconfigure };
