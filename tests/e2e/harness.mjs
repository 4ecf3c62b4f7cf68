// Shared by the end-to-end network tests: a static server, headless
// Chromium, and `persist` processes (PERSIST_BIN) on loopback, every wait
// bounded.
import { after, before } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir, homedir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { serve } from "../../scripts/serve.mjs";

export const root = fileURLToPath(new URL("../..", import.meta.url));
export const BIN =
  process.env.PERSIST_BIN ??
  join(process.env.CARGO_TARGET_DIR ?? join(homedir(), ".cache/persist-target"), "debug/persist");
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-dev-shm-usage",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  // WebRTC would announce host candidates over mDNS (multicast): off.
  "--disable-features=WebRtcHideLocalIpsWithMdns",
  // Tests run on loopback: let WebRTC gather loopback candidates.
  "--allow-loopback-in-peer-connection",
];
/** Every wait in this file is bounded by this. */
export const WAIT_MS = 30_000;

export const env = { server: null, browser: null, work: null, processes: [] };

/** Registers the file's before/after hooks. */
export function useHarness() {
  before(async () => {
    env.work = mkdtempSync(join(tmpdir(), "persist-net-"));
    env.server = await serve(root);
    env.browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: CHROMIUM_ARGS });
  });
  after(async () => {
    for (const p of env.processes) p.kill("SIGKILL");
    await env.browser?.close();
    await env.server?.close();
    rmSync(env.work, { recursive: true, force: true });
  });
}

/**
 * Runs `persist ARGS` in the background; `waitFor(regex)` resolves to the
 * first stdout line matching it (bounded), `exited` when it ends.
 */
export function persist(args, { stdin = false } = {}) {
  return track(BIN, args, { cwd: env.work, stdin }, `persist ${args[0]}`);
}

/**
 * Runs a Node.js script (`node FILE`) in `cwd` in the background, with
 * the same handle as `persist` (`waitFor`, `exited`, `lines`); `vars` are
 * added to its environment.
 */
export function nodeScript(file, { cwd, vars = {}, stdin = false } = {}) {
  return track(process.execPath, [file], { cwd, vars, stdin }, `node ${file}`);
}

function track(command, args, { cwd, vars = {}, stdin = false }, label) {
  const child = spawn(command, args, {
    cwd,
    env: { ...process.env, PERSIST_MDNS: "off", PERSIST_KEYCHAIN: "off", PERSIST_LOG: process.env.PERSIST_LOG ?? "warn", ...vars },
    stdio: [stdin ? "pipe" : "ignore", "pipe", "pipe"],
  });
  env.processes.push(child);
  const lines = [];
  const waiters = [];
  const listeners = [];
  let stderr = "";
  let buffered = "";
  child.stdout.on("data", (chunk) => {
    buffered += chunk;
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      lines.push(line);
      for (const l of listeners) l(line);
      for (const w of [...waiters]) {
        const m = line.match(w.regex);
        if (m) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(m);
        }
      }
    }
  });
  child.stderr.on("data", (chunk) => (stderr += chunk));
  const exited = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
  return {
    child,
    lines,
    /** Calls `fn(line)` for each later line, as it arrives. */
    onLine: (fn) => listeners.push(fn),
    exited,
    stderr: () => stderr,
    waitFor(regex, ms = WAIT_MS) {
      const found = lines.map((l) => l.match(regex)).find(Boolean);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const w = { regex, resolve };
        waiters.push(w);
        setTimeout(() => {
          if (waiters.includes(w)) {
            reject(new Error(`${label}: no line matching ${regex} in ${ms} ms\nstdout:\n${lines.join("\n")}\nstderr:\n${stderr}`));
          }
        }, ms).unref();
      });
    },
  };
}

/**
 * A fresh Node.js project in the work directory with the built package
 * (`pkg/`) installed from its tarball, as an application would have it.
 */
export function installedProject() {
  const project = join(env.work, "app");
  mkdirSync(project);
  const packed = execFileSync("npm", ["pack", join(root, "pkg"), "--pack-destination", env.work, "--silent"], { encoding: "utf8" }).trim().split("\n").pop();
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  execFileSync("npm", ["install", "--no-audit", "--no-fund", "--loglevel=error", join(env.work, packed)], { cwd: project, stdio: "inherit" });
  return project;
}

/** A device: a directory of its own using `project`'s installed package. */
export function deviceOf(project, name) {
  const dir = join(env.work, name);
  mkdirSync(dir, { recursive: true });
  execFileSync("ln", ["-s", join(project, "node_modules"), join(dir, "node_modules")]);
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name, private: true, type: "module" }));
  return dir;
}

/** Runs a tracked process to its end; its stdout lines (fails on a non-zero exit). */
export async function finished(run) {
  const code = await Promise.race([run.exited, new Promise((r) => setTimeout(() => r("timeout"), WAIT_MS * 2).unref())]);
  assert.equal(code, 0, `${run.child.spawnargs.join(" ")} failed (${code}):\n${run.lines.join("\n")}\n${run.stderr()}`);
  return run.lines;
}

/** Runs `persist ARGS` to the end; its stdout. */
export async function persistDone(args) {
  const run = persist(args);
  const code = await Promise.race([run.exited, new Promise((r) => setTimeout(() => r("timeout"), WAIT_MS).unref())]);
  assert.equal(code, 0, `persist ${args.join(" ")} failed (${code}):\n${run.lines.join("\n")}\n${run.stderr()}`);
  return run.lines.join("\n");
}

/**
 * A `persist node` on loopback: its TCP and WebSocket addresses, and its
 * WebRTC-direct one with `{ webrtc: true }` (inside a network namespace
 * only: a WebRTC connection joins multicast groups). Relayed connections
 * may carry sync (an hour, 1 GiB; the default is sized for pairing), and
 * the node prints who reserves and who is relayed to whom, which the
 * tests wait for.
 */
export async function startNode({ webrtc = false } = {}) {
  const listen = ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws"];
  if (webrtc) listen.push(`/ip4/${webrtcHost()}/udp/0/webrtc-direct`);
  const node = persist([
    "node", "--data", join(env.work, `node-${env.processes.length}`), "--for", "600",
    "--max-circuit-seconds", "3600", "--max-circuit-bytes", "1073741824", "--log-peers",
    ...listen.flatMap((addr) => ["--listen", addr]),
  ]);
  const tcp = (await node.waitFor(/^listening: (\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\/\S+)$/))[1];
  const ws = (await node.waitFor(/^listening: (\S+\/ws\/p2p\/[^/\s]+)$/))[1];
  const rtc = webrtc ? (await node.waitFor(/^listening: (\S+\/webrtc-direct\/certhash\/\S+\/p2p\/[^/\s]+)$/))[1] : null;
  return { node, tcp, ws, webrtc: rtc };
}

/**
 * Where WebRTC-direct listens in tests: the private address of the network
 * namespace's veth interface (scripts/netns.sh), since the native WebRTC
 * stack gathers no loopback candidates.
 */
export function webrtcHost() {
  const addr = process.env.PERSIST_NETNS_ADDR;
  if (!addr) throw new Error("WebRTC tests run inside scripts/netns.sh (PERSIST_NETNS_ADDR is unset)");
  return addr;
}

/** A page of a device (a browser context: its own IndexedDB and identity). */
export async function device(context) {
  const ctx = context ?? (await env.browser.newContext());
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  if (process.env.PERSIST_E2E_CONSOLE) page.on("console", (m) => console.log("[page]", m.text()));
  await page.goto(`${env.server.url}/www/e2e.html`);
  // The page keeps its store and node on window for later steps.
  return { page, ctx, errors };
}

/** Opens the page's store and its P2P node through `bootstrap`. */
export async function online(page, name, bootstrap, options = {}) {
  return page.evaluate(
    async ({ name, bootstrap, options }) => {
      const { createStore } = await import("/pkg/index.js");
      const store = await createStore(name, options);
      const p2p = await store.enableP2P({ bootstrapPeers: [bootstrap] });
      window.persistEvents = [];
      p2p.on("*", (e) => window.persistEvents.push(e));
      window.store = store;
      return p2p.peerId;
    },
    { name, bootstrap, options },
  );
}

/** Waits in the page until `records(collection).get(id)` has a value. */
export async function waitForRecord(page, collection, id, ms = WAIT_MS) {
  return page.evaluate(
    async ({ collection, id, ms }) => {
      const until = Date.now() + ms;
      while (Date.now() < until) {
        const value = await window.store.records(collection).get(id);
        if (value) return value;
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error(`record ${collection}/${id} did not arrive in ${ms} ms`);
    },
    { collection, id, ms },
  );
}

/** The ids of a collection's records in the page's store. */
export async function ids(page, collection) {
  return page.evaluate(async (c) => (await window.store.records(c).list()).map((r) => r.id), collection);
}

/** Waits until `check()` in the page is truthy (bounded). */
export async function until(page, check, arg, ms = WAIT_MS) {
  await page.waitForFunction(check, arg, { timeout: ms, polling: 50 });
}

