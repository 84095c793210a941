// Real servers for the integration and end-to-end tests: a `redis-server`
// and `switchboard` nodes in cluster mode, each a child process on free
// loopback ports. Every wait has a deadline that names what it waited for;
// readiness, which has no event to wait on, is polled. Whatever a test file
// started is killed when it ends, however it ends.

import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** Fails with a message naming `what` when `promise` takes longer than `ms`. */
export async function within<T>(what: string, ms: number, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms}ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

function repositoryRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'Cargo.lock'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('no Cargo.lock above the tests: run them inside the Switchboard repository');
    dir = parent;
  }
  return dir;
}

/** The `switchboard` binary: `SWITCHBOARD_BIN`, else the debug build. */
export function switchboardBinary(): string {
  const binary = process.env.SWITCHBOARD_BIN ?? join(repositoryRoot(), 'target', 'debug', 'switchboard');
  if (!existsSync(binary)) throw new Error(`no ${binary}: run cargo build -p switchboard-gateway first`);
  return binary;
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** A child process whose exit can be awaited. */
class Child {
  readonly exited: Promise<number | null>;

  constructor(readonly process: ChildProcess) {
    running.add(process);
    this.exited = new Promise((resolve) => {
      process.once('exit', (code) => {
        running.delete(process);
        resolve(code);
      });
    });
  }

  /** Resolves with the first line of stdout that `match` accepts; fails if the process exits first. */
  line(what: string, match: (line: string) => boolean): Promise<string> {
    const stdout = this.process.stdout;
    if (!stdout) throw new Error('stdout is not piped');
    const lines = createInterface({ input: stdout });
    return within(
      what,
      20_000,
      new Promise((resolve, reject) => {
        lines.on('line', (line) => {
          if (match(line)) resolve(line);
        });
        this.exited.then((code) => reject(new Error(`exited (${code}) before ${what}`)));
      }),
    );
  }

  async kill(): Promise<void> {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill('SIGKILL');
    await this.exited;
  }
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

/** A `redis-server` without persistence, in its own temporary directory. */
export class Redis {
  private constructor(
    private readonly child: Child,
    private readonly dir: string,
    readonly url: string,
  ) {}

  static async start(): Promise<Redis> {
    // The free port may be taken again before redis binds it: try another.
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const dir = mkdtempSync(join(tmpdir(), 'sb-js-redis-'));
      const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir];
      const child = new Child(spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'inherit'] }));
      try {
        await child.line(`redis-server on port ${port}`, (line) => line.includes('Ready to accept connections'));
        return new Redis(child, dir, `redis://127.0.0.1:${port}`);
      } catch (error) {
        await child.kill();
        rmSync(dir, { recursive: true, force: true });
        if (attempt === 3) throw error;
      }
    }
  }

  async stop(): Promise<void> {
    await this.child.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface NodeSettings {
  redisUrl: string;
  nodeId: string;
  /** The public port; default: a free one. */
  port?: number;
  /** Flags after the fixed ones. */
  args?: readonly string[];
}

/** One `switchboard serve` process in cluster mode with development auth, durable delivery. */
export class SwitchboardNode {
  private constructor(
    private readonly child: Child,
    readonly settings: NodeSettings,
    readonly port: number,
  ) {}

  static async start(settings: NodeSettings): Promise<SwitchboardNode> {
    const listen = `127.0.0.1:${settings.port ?? 0}`;
    const args = [
      'serve',
      ...['--redis-url', settings.redisUrl, '--node-id', settings.nodeId, '--listen', listen],
      ...['--metrics-listen', '127.0.0.1:0', '--dev-insecure-auth', '--delivery', 'durable'],
      ...(settings.args ?? []),
    ];
    const env = { ...process.env, RUST_LOG: process.env.SWITCHBOARD_TEST_LOG ?? 'error' };
    const child = new Child(spawn(switchboardBinary(), args, { env, stdio: ['ignore', 'pipe', 'inherit'] }));
    const line = await child.line(`node ${settings.nodeId} to listen`, (text) => text.startsWith('listening '));
    // Keep reading stdout so that the node never blocks on a full pipe.
    child.process.stdout?.resume();
    const port = Number(/public=127\.0\.0\.1:(\d+)/.exec(line)?.[1]);
    const node = new SwitchboardNode(child, settings, port);
    await within(`node ${settings.nodeId} to be ready`, 20_000, node.ready());
    return node;
  }

  get httpUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Polls /readyz until 200: readiness is a state, with no event to wait on. */
  private async ready(): Promise<void> {
    for (;;) {
      const response = await fetch(`${this.httpUrl}/readyz`).catch(() => undefined);
      if (response?.status === 200) return;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /** SIGTERM: the node drains (its clients get close 1012), then exits. Resolves once it exited. */
  async terminate(): Promise<void> {
    this.child.process.kill('SIGTERM');
    const code = await within(`node ${this.settings.nodeId} to exit`, 30_000, this.child.exited);
    if (code !== 0) throw new Error(`node ${this.settings.nodeId} exited with ${code} after SIGTERM`);
  }

  /** Resolves with the exit code once the process exited. */
  get exited(): Promise<number | null> {
    return this.child.exited;
  }

  async kill(): Promise<void> {
    await this.child.kill();
  }
}

/** One Redis and nodes `n1`, `n2`... sharing it. */
export class Cluster {
  private constructor(
    readonly redis: Redis,
    readonly nodes: SwitchboardNode[],
  ) {}

  /**
   * Starts Redis and `count` nodes with `args`. Drain is short
   * (`--shutdown-grace 2s`), so a terminated node closes its clients
   * within a second.
   */
  static async start(count: number, args: readonly string[] = []): Promise<Cluster> {
    const redis = await Redis.start();
    const cluster = new Cluster(redis, []);
    try {
      for (let index = 1; index <= count; index++) {
        const settings = { redisUrl: redis.url, nodeId: `n${index}`, args: ['--shutdown-grace', '2s', ...args] };
        cluster.nodes.push(await SwitchboardNode.start(settings));
      }
    } catch (error) {
      await cluster.stop();
      throw error;
    }
    return cluster;
  }

  node(index: number): SwitchboardNode {
    const node = this.nodes[index];
    if (!node) throw new Error(`no node ${index}`);
    return node;
  }

  /** Starts node `index` again, on the same port with the same id, once the old process exited. */
  async startAgain(index: number): Promise<SwitchboardNode> {
    const old = this.node(index);
    await within(`node ${old.settings.nodeId} to exit`, 30_000, old.exited);
    const restarted = await SwitchboardNode.start({ ...old.settings, port: old.port });
    this.nodes[index] = restarted;
    return restarted;
  }

  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((node) => node.kill()));
    await this.redis.stop();
  }
}
