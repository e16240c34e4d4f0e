#!/usr/bin/env node
// Severity filter as a standalone Logloom service plugin (Node.js >= 20, built-in modules only).
//
// Logloom workers connect over a Unix socket or TCP and speak JSON-RPC 2.0, one message per
// "\n"-terminated UTF-8 line; see plugins/services/README.md for the protocol. The filter logic
// is that of plugins/python/log_filter_severity.py: keep an entry when its level ranks at or above
// min_level (default INFO); an unknown level counts as INFO.
//
// min_level is per connection: each client's `init` configures only that client.
//
// Test hook: when the environment variable LOGLOOM_SERVICE_CRASH_ON is set (non-empty) and an
// entry's "message" equals it, the process exits at once with code 3, as if it died mid-batch.
//
// Usage: node plugins/services/severity_service.js [--unix PATH | --tcp HOST:PORT]

'use strict';

const fs = require('node:fs');
const net = require('node:net');

const DEFAULT_UNIX_PATH = '/tmp/logloom-severity.sock';
const LINE_LIMIT = 64 * 1024 * 1024; // longest request line accepted, in bytes

const PLUGIN_INFO = Object.freeze({
  name: 'severity_service_js',
  version: '1.0.0',
  type: 'filter',
  capability: ['text', 'batch'],
  author: 'Logloom Team',
  description: 'Drops entries below min_level (default INFO); standalone service (Node.js)',
  mode: 'sync',
});

const LEVEL_MAP = new Map([
  ['DEBUG', 0],
  ['INFO', 1],
  ['WARN', 2],
  ['ERROR', 3],
  ['FATAL', 4],
]);
const DEFAULT_RANK = LEVEL_MAP.get('INFO');

const CRASH_ON = process.env.LOGLOOM_SERVICE_CRASH_ON || null;
const CRASH_EXIT_CODE = 3;

const PARSE_ERROR = -32700;
const INVALID_REQUEST = -32600;
const METHOD_NOT_FOUND = -32601;
const INVALID_PARAMS = -32602;
const INTERNAL_ERROR = -32603;

const NOT_AN_OBJECT = 'entry is not an object';
const NEWLINE = 0x0a;

const utf8 = new TextDecoder('utf-8', { fatal: true });

class RpcError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function isObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function frame(message) {
  return JSON.stringify(message) + '\n';
}

function errorFrame(id, code, message) {
  return frame({ jsonrpc: '2.0', id, error: { code, message } });
}

// True keeps the entry. The caller has checked that `entry` is an object.
function keep(entry, minRank) {
  if (CRASH_ON !== null && entry.message === CRASH_ON) {
    process.exit(CRASH_EXIT_CODE); // test hook: die like a crashed service, no cleanup
  }
  const level = entry.level;
  const rank = typeof level === 'string' && LEVEL_MAP.has(level) ? LEVEL_MAP.get(level) : DEFAULT_RANK;
  return rank >= minRank;
}

// One client connection: its min_level and request dispatch.
class Session {
  constructor() {
    this.minRank = DEFAULT_RANK;
    this.closing = false;
  }

  // Answer one request line (a Buffer without its "\n"); null for a notification (no "id").
  handleLine(line) {
    let request;
    try {
      request = JSON.parse(utf8.decode(line));
    } catch (err) {
      return errorFrame(null, PARSE_ERROR, `Parse error: ${err.message}`);
    }
    if (!isObject(request)) {
      const what = Array.isArray(request) ? 'batch arrays are not supported' : 'not an object';
      return errorFrame(null, INVALID_REQUEST, `Invalid Request: ${what}`);
    }
    const isNotification = !Object.hasOwn(request, 'id');
    const id = isNotification ? null : request.id;
    if (id !== null && typeof id !== 'string' && typeof id !== 'number') {
      return errorFrame(null, INVALID_REQUEST, 'Invalid Request: id must be a string or number');
    }
    const method = request.method;
    if (request.jsonrpc !== '2.0' || typeof method !== 'string') {
      return errorFrame(id, INVALID_REQUEST, 'Invalid Request: need "jsonrpc":"2.0" and a method');
    }
    const params = Object.hasOwn(request, 'params') ? request.params : {};
    let response;
    try {
      if (!isObject(params)) {
        throw new RpcError(INVALID_PARAMS, 'params must be an object');
      }
      response = frame({ jsonrpc: '2.0', id, result: this.dispatch(method, params) });
    } catch (err) {
      response =
        err instanceof RpcError
          ? errorFrame(id, err.code, err.message)
          : errorFrame(id, INTERNAL_ERROR, `Internal error: ${err && err.message}`);
    }
    return isNotification ? null : response;
  }

  dispatch(method, params) {
    switch (method) {
      case 'process_batch':
        return this.processBatch(params);
      case 'process':
        return this.process(params);
      case 'info':
        return PLUGIN_INFO;
      case 'init':
        return this.init(params);
      case 'shutdown':
        this.closing = true;
        return { status: 0 };
      default:
        throw new RpcError(METHOD_NOT_FOUND, `Method not found: ${method}`);
    }
  }

  init(params) {
    let config = params.config;
    if (config === undefined || config === null) config = {};
    if (!isObject(config)) {
      throw new RpcError(INVALID_PARAMS, 'params.config must be an object');
    }
    const raw = Object.hasOwn(config, 'min_level') ? config.min_level : 'INFO';
    const minLevel = String(raw).toUpperCase();
    if (!LEVEL_MAP.has(minLevel)) {
      throw new RpcError(
        INVALID_PARAMS,
        `min_level '${minLevel}' is not one of ${[...LEVEL_MAP.keys()].join(', ')}`,
      );
    }
    this.minRank = LEVEL_MAP.get(minLevel);
    return { status: 0 };
  }

  process(params) {
    if (!Object.hasOwn(params, 'entry')) {
      throw new RpcError(INVALID_PARAMS, 'params.entry is required');
    }
    const entry = params.entry;
    if (!isObject(entry)) return { status: 1, error: NOT_AN_OBJECT };
    return { status: 0, result: keep(entry, this.minRank) };
  }

  processBatch(params) {
    const entries = params.entries;
    if (!Array.isArray(entries)) {
      throw new RpcError(INVALID_PARAMS, 'params.entries must be an array');
    }
    const minRank = this.minRank;
    const results = new Array(entries.length);
    const errors = {};
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i];
      if (isObject(entry)) {
        results[i] = keep(entry, minRank);
      } else {
        results[i] = null;
        errors[String(i)] = NOT_AN_OBJECT;
      }
    }
    return { status: 0, results, errors };
  }
}

const clients = new Set();

function handleClient(socket) {
  clients.add(socket);
  const session = new Session();
  let chunks = []; // pieces of the current, unfinished line
  let pending = 0; // bytes in `chunks`
  let done = false;

  // Send a response; pause reading while the kernel buffer is full so a fast client
  // cannot make us queue responses without bound.
  function send(text) {
    if (!socket.write(text)) {
      socket.pause();
      socket.once('drain', () => {
        if (!done) socket.resume();
      });
    }
  }

  function finish(lastWords) {
    done = true;
    chunks = [];
    pending = 0;
    if (lastWords !== undefined) socket.end(lastWords);
    else socket.end();
  }

  function handle(line) {
    if (line.length === 0 || isBlank(line)) return;
    const response = session.handleLine(line);
    if (response !== null) send(response);
    if (session.closing) finish();
  }

  socket.on('data', (data) => {
    let start = 0;
    while (!done) {
      const nl = data.indexOf(NEWLINE, start);
      if (nl === -1) break;
      let line = data.subarray(start, nl);
      if (pending > 0) {
        chunks.push(line);
        line = Buffer.concat(chunks, pending + line.length);
        chunks = [];
        pending = 0;
      }
      start = nl + 1;
      if (line.length > LINE_LIMIT) {
        finish(errorFrame(null, INVALID_REQUEST, `request line exceeds ${LINE_LIMIT} bytes`));
        return;
      }
      handle(line);
    }
    if (done || start >= data.length) return;
    const rest = data.subarray(start);
    chunks.push(rest);
    pending += rest.length;
    if (pending > LINE_LIMIT) {
      finish(errorFrame(null, INVALID_REQUEST, `request line exceeds ${LINE_LIMIT} bytes`));
    }
  });

  socket.on('end', () => {
    // A last line without its "\n" is still answered, then we close our side.
    if (!done && pending > 0) {
      const line = Buffer.concat(chunks, pending);
      chunks = [];
      pending = 0;
      handle(line);
    }
    if (!done) finish();
  });

  socket.on('error', () => {}); // the client went away; 'close' follows
  socket.on('close', () => {
    done = true;
    clients.delete(socket);
  });
}

function isBlank(buf) {
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i];
    if (c !== 0x20 && c !== 0x09 && c !== 0x0d && c !== 0x0a) return false;
  }
  return true;
}

function die(message) {
  process.stderr.write(`severity_service_js: ${message}\n`);
  process.exit(2);
}

function usage() {
  return 'usage: severity_service.js [--unix PATH | --tcp HOST:PORT]';
}

function parseArgs(argv) {
  let unix = null;
  let tcp = null;
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq !== -1) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (arg === '-h' || arg === '--help') {
      process.stdout.write(usage() + '\n');
      process.exit(0);
    }
    if (arg !== '--unix' && arg !== '--tcp') die(`unknown argument ${argv[i]}\n${usage()}`);
    if (value === undefined) {
      if (i + 1 >= argv.length) die(`${arg} needs a value\n${usage()}`);
      value = argv[++i];
    }
    if (arg === '--unix') unix = value;
    else tcp = value;
  }
  if (unix !== null && tcp !== null) die(`--unix and --tcp are mutually exclusive\n${usage()}`);
  if (tcp === null) return { unix: unix === null ? DEFAULT_UNIX_PATH : unix };
  const m = /^(.+):(\d+)$/.exec(tcp);
  if (!m || Number(m[2]) > 65535) die(`expected HOST:PORT, got '${tcp}'`);
  let host = m[1];
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1); // [::1]:7400
  return { tcp: { host, port: Number(m[2]) } };
}

// Remove a stale socket file; refuse to clobber a live service or a non-socket file.
function prepareUnixPath(path) {
  let st;
  try {
    st = fs.lstatSync(path);
  } catch (err) {
    if (err.code === 'ENOENT') return Promise.resolve();
    throw err;
  }
  if (!st.isSocket()) die(`${path} exists and is not a socket; not removing it`);
  return new Promise((resolve) => {
    const probe = net.connect({ path });
    const timer = setTimeout(() => probe.destroy(new Error('timeout')), 1000);
    probe.once('connect', () => {
      clearTimeout(timer);
      probe.destroy();
      die(`another service is already listening on ${path}`);
    });
    probe.once('error', () => {
      clearTimeout(timer);
      fs.rmSync(path, { force: true }); // nobody answers: stale
      resolve();
    });
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  // allowHalfOpen: answer a last unterminated line after the client has shut down its side.
  const server = net.createServer({ allowHalfOpen: true }, handleClient);
  let unixPath = null;
  let unixInode = null;

  server.on('error', (err) => die(`cannot listen: ${err.message}`));

  let where;
  if (args.tcp) {
    const { host, port } = args.tcp;
    await new Promise((resolve) => server.listen({ host, port }, resolve));
    const shown = host.includes(':') ? `[${host}]` : host;
    where = `tcp:${shown}:${server.address().port}`; // the real port when 0 was asked for
  } else {
    unixPath = args.unix;
    await prepareUnixPath(unixPath);
    await new Promise((resolve) => server.listen({ path: unixPath }, resolve));
    unixInode = fs.statSync(unixPath).ino;
    where = `unix:${unixPath}`;
  }

  let stopping = false;
  function stop() {
    if (stopping) return;
    stopping = true;
    server.close();
    for (const socket of clients) socket.destroy();
    if (unixPath !== null) {
      // Only remove the file if it is still ours (a newer instance may have replaced it).
      try {
        if (fs.statSync(unixPath).ino === unixInode) fs.unlinkSync(unixPath);
      } catch {
        // already gone
      }
    }
    process.exit(0);
  }
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  // One line on stdout once ready, so a supervisor or test can wait for it.
  process.stdout.write(`listening on ${where}\n`);
}

main().catch((err) => die(err && err.stack ? err.stack : String(err)));
