/**
 * SshConnector on ssh2: bounded handshakes with retry, host-key pinning, bounded channels.
 *
 * Why the bounds: OpenSSH drops unauthenticated connections beyond `MaxStartups 10:30:100`
 * and refuses channels beyond `MaxSessions 10` per connection, so a fleet-wide fan-out that
 * does not limit itself fails at random (see /work/shared/TESTING.md, "SSH").
 */
import net from 'node:net';
import type { Duplex, Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import pLimit, { type LimitFunction } from 'p-limit';
import ssh2 from 'ssh2';
import type { ClientChannel } from 'ssh2';
import { DirectorError } from '../errors.js';
import { sha256Fingerprint } from './fingerprint.js';
import type { ExecOptions, ExecResult, SshConnection, SshConnector, SshTarget } from './types.js';

const { Client } = ssh2;
type Ssh2Client = InstanceType<typeof Client>;

export interface Ssh2ConnectorOptions {
  /** handshakes in flight across all hosts; bounds CPU spent on key exchange. Default 32. */
  maxConcurrentHandshakes?: number;
  /**
   * handshakes in flight to one host:port. Default 8: under OpenSSH's `MaxStartups` start of
   * 10, so a single sshd (a bastion, or tests) is never pushed into random early drops.
   */
  maxHandshakesPerHost?: number;
  /** exec channels open at once on one connection. Default 8, under OpenSSH's `MaxSessions 10`. */
  maxChannelsPerConnection?: number;
  /** attempts per connect() when the handshake is refused or dropped. Default 6. */
  connectAttempts?: number;
  /** per attempt: TCP connect + key exchange + authentication. Default 20 000 ms. */
  readyTimeoutMs?: number;
  /**
   * SSH-level keepalive, so a VM that vanished without a FIN/RST fails its running commands
   * with `ssh_connection_lost` within ~3 intervals instead of at the exec timeout.
   * Default 15 000 ms; 0 disables.
   */
  keepaliveIntervalMs?: number;
  /** injectable for tests; defaults to Math.random */
  random?: () => number;
  /** injectable for tests; defaults to a real timer */
  sleep?: (ms: number) => Promise<void>;
}

const DEFAULT_EXEC_TIMEOUT_MS = 10 * 60 * 1000;
/** Output kept per stream: enough for any diagnostic, bounded against a runaway `yes`. */
const OUTPUT_TAIL_BYTES = 1024 * 1024;
const BACKOFF_BASE_MS = 100;
const BACKOFF_CAP_MS = 2000;
/** A server that ignores our disconnect must not keep the process alive. */
const CLOSE_GRACE_MS = 2000;

const RETRYABLE_ERRNOS = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAGAIN']);

export function describeTarget(target: SshTarget): string {
  const addr = `${target.host}:${target.port}`;
  return target.label ? `${target.label} (${addr})` : `${target.username}@${addr}`;
}

/**
 * Full jitter (AWS architecture blog, "Exponential Backoff and Jitter"): a burst of clients
 * refused together by MaxStartups must not come back together.
 * attempt 1 → [0, 100) ms, 2 → [0, 200), 3 → [0, 400) … capped at [0, 2000).
 */
export function backoffDelayMs(attempt: number, random: () => number): number {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (attempt - 1));
  return Math.floor(random() * ceiling);
}

interface Handshaken {
  client: Ssh2Client;
  fingerprint: string;
  /** the jump host's connection this one runs over, if any */
  via?: Handshaken;
}

/**
 * Our own socket so Nagle can be switched off before the first byte: with it on, the many small
 * handshake packets wait on delayed ACKs (~115 ms vs ~260 ms per handshake).
 */
function tcpSocket(target: SshTarget): net.Socket {
  const sock = net.connect({ host: target.host, port: target.port });
  sock.setNoDelay(true);
  return sock;
}

/** A `direct-tcpip` channel from the jump host to the target, like `ssh -J`. */
function forwardOut(jump: Ssh2Client, target: SshTarget): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    try {
      jump.forwardOut('127.0.0.1', 0, target.host, target.port, (err, stream) => (err ? reject(err) : resolve(stream)));
    } catch (e) {
      reject(e as Error);
    }
  });
}

function endChain(h: Handshaken | undefined): void {
  for (let cur = h; cur; cur = cur.via) {
    const c = cur.client;
    c.end();
    setTimeout(() => c.destroy(), CLOSE_GRACE_MS).unref();
  }
}

export class Ssh2Connector implements SshConnector {
  private readonly handshakes: LimitFunction;
  private readonly perHost = new Map<string, { limit: LimitFunction; users: number }>();
  private readonly maxPerHost: number;
  private readonly maxChannels: number;
  private readonly attempts: number;
  private readonly readyTimeoutMs: number;
  private readonly keepaliveIntervalMs: number;
  private readonly random: () => number;
  private readonly sleep: (ms: number) => Promise<void>;

  constructor(opts: Ssh2ConnectorOptions = {}) {
    this.handshakes = pLimit(opts.maxConcurrentHandshakes ?? 32);
    this.maxPerHost = opts.maxHandshakesPerHost ?? 8;
    this.maxChannels = opts.maxChannelsPerConnection ?? 8;
    this.attempts = Math.max(1, opts.connectAttempts ?? 6);
    this.readyTimeoutMs = opts.readyTimeoutMs ?? 20_000;
    this.keepaliveIntervalMs = opts.keepaliveIntervalMs ?? 15_000;
    this.random = opts.random ?? Math.random;
    this.sleep = opts.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
  }

  async connect(target: SshTarget): Promise<SshConnection> {
    const first = await this.establish(target);
    // A connection that drops between commands reconnects on its next exec, to the same host key.
    return new Ssh2Connection(first, target, this.maxChannels, (pinned) => this.establish(pinned));
  }

  /** A handshaken client, with retries (backoff + full jitter) of refused or dropped attempts. */
  private async establish(target: SshTarget): Promise<Handshaken> {
    let lastCause: Error | undefined;
    for (let attempt = 1; attempt <= this.attempts; attempt++) {
      try {
        return await this.attempt(target);
      } catch (e) {
        if (e instanceof DirectorError) throw e; // host key mismatch, auth failure: retrying cannot help
        lastCause = e as Error;
        if (attempt < this.attempts) await this.sleep(backoffDelayMs(attempt, this.random));
      }
    }
    const where = describeTarget(target);
    const via = target.jump ? ` via jump host ${target.jump.host}:${target.jump.port}` : '';
    throw new DirectorError('ssh_unreachable', 'infrastructure', `cannot open an SSH connection to ${where}${via} after ${this.attempts} attempts: ${lastCause?.message ?? 'unknown error'}`, {
      hint: target.jump
        ? `Check that the jump host accepts the director's key and allows TCP forwarding (AllowTcpForwarding), and that ${target.host}:${target.port} is reachable from it and running sshd.`
        : `Check that the VM is running and sshd is listening on ${target.host}:${target.port} (a VM that is still booting refuses connections; a crowded sshd drops handshakes beyond its MaxStartups).`,
      cause: lastCause,
    });
  }

  /**
   * One attempt, through the jump chain if any. Slots are held only for each handshake itself:
   * the jump's handshake completes (and frees its slot) before the target's takes one, so nested
   * slots cannot deadlock the global limit.
   */
  private async attempt(target: SshTarget): Promise<Handshaken> {
    if (!target.jump) return this.withHandshakeSlot(target, () => this.handshake(target, tcpSocket(target)));
    const jump = await this.attempt(target.jump);
    let stream: Duplex;
    try {
      stream = await forwardOut(jump.client, target);
    } catch (e) {
      endChain(jump);
      // Retryable: the target may be booting, or the jump host briefly refusing channels.
      throw new Error(`jump host ${describeTarget(target.jump)} could not open a stream to ${target.host}:${target.port}: ${(e as Error).message}`);
    }
    try {
      const h = await this.withHandshakeSlot(target, () => this.handshake(target, stream));
      // The jump connection lives exactly as long as the target's.
      h.client.once('close', () => endChain(jump));
      return { ...h, via: jump };
    } catch (e) {
      endChain(jump);
      throw e;
    }
  }

  private async withHandshakeSlot<T>(target: SshTarget, fn: () => Promise<T>): Promise<T> {
    // Per-host first, then global: a global slot must not sit idle waiting for a busy host.
    const key = `${target.host}:${target.port}`;
    let host = this.perHost.get(key);
    if (!host) {
      host = { limit: pLimit(this.maxPerHost), users: 0 };
      this.perHost.set(key, host);
    }
    host.users++;
    try {
      return await host.limit(() => this.handshakes(fn));
    } finally {
      // Counted by hand: p-limit's activeCount is decremented after our await resumes.
      if (--host.users === 0) this.perHost.delete(key);
    }
  }

  /** One attempt. Rejects with DirectorError for final failures, a plain Error for retryable ones. */
  private handshake(target: SshTarget, sock: Duplex): Promise<Handshaken> {
    return new Promise<Handshaken>((resolve, reject) => {
      const client = new Client();
      let offered: string | undefined;
      let mismatch = false;
      let settled = false;

      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        client.destroy();
        reject(this.classify(target, err, offered, mismatch));
      };
      // Stays attached for the client's lifetime: an 'error' without a listener kills the process.
      client.on('error', fail);
      client.on('close', () => fail(new Error('connection closed before the SSH handshake completed')));
      client.once('ready', () => {
        if (settled) {
          client.end();
          return;
        }
        settled = true;
        resolve({ client, fingerprint: offered ?? '' });
      });

      try {
        client.connect({
          sock,
          username: target.username,
          privateKey: target.privateKey,
          readyTimeout: this.readyTimeoutMs,
          keepaliveInterval: this.keepaliveIntervalMs,
          keepaliveCountMax: 3,
          hostVerifier: (key: Buffer) => {
            offered = sha256Fingerprint(key);
            if (target.hostKeyFingerprint !== undefined && offered !== target.hostKeyFingerprint) {
              mismatch = true;
              return false;
            }
            return true;
          },
        });
      } catch (e) {
        // ssh2 validates the private key synchronously.
        sock.destroy();
        if (settled) return;
        settled = true;
        reject(
          new DirectorError('ssh_invalid_private_key', 'user', `cannot use the private key for ${describeTarget(target)}: ${(e as Error).message}`, {
            hint: 'The director authenticates with its own OpenSSH-format key ($DIRECTOR_HOME/keys/id_ed25519); check that file is intact.',
            cause: e,
          }),
        );
      }
    });
  }

  private classify(target: SshTarget, err: Error, offered: string | undefined, mismatch: boolean): Error {
    const where = describeTarget(target);
    if (mismatch) {
      return new DirectorError(
        'ssh_host_key_mismatch',
        'infrastructure',
        `host key of ${where} does not match the recorded one: expected ${target.hostKeyFingerprint}, offered ${offered}`,
        {
          hint: 'Either the host was replaced or someone is intercepting the connection; the director will not talk to it. If the VM was legitimately rebuilt outside the director, recreate it through the director so its new host key is recorded.',
          cause: err,
        },
      );
    }
    const level = (err as { level?: string }).level;
    if (level === 'client-authentication') {
      return new DirectorError('ssh_auth_failed', 'infrastructure', `${where} refused the director's key for user ${target.username}: ${err.message}`, {
        hint: "The VM's authorized_keys does not contain the director's public key ($DIRECTOR_HOME/keys/id_ed25519.pub), or the user does not exist. Recreate the VM through the director.",
        cause: err,
      });
    }
    if (isRetryable(err)) return err;
    return new DirectorError('ssh_unreachable', 'infrastructure', `SSH handshake with ${where} failed: ${err.message}`, {
      hint: 'The server speaks SSH but the handshake failed for a reason retrying will not fix (e.g. no common algorithm); check the sshd configuration on the VM.',
      cause: err,
    });
  }
}

function isRetryable(err: Error): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  if (code !== undefined && RETRYABLE_ERRNOS.has(code)) return true;
  const level = (err as { level?: string }).level;
  // Any socket-level failure or our readyTimeout: the peer may just be booting or busy.
  if (level === 'client-socket' || level === 'client-timeout') return true;
  // How OpenSSH's MaxStartups drop looks from here: accept, then close before the banner.
  if (err.message.includes('Connection lost before handshake')) return true;
  if (err.message.includes('connection closed before the SSH handshake completed')) return true;
  return false;
}

/**
 * Sends SIGKILL to the remote command's process group. Closing the channel alone is not
 * enough: OpenSSH leaves a no-pty command running until it next touches its pipes, and the
 * session keeps counting against MaxSessions meanwhile. sshd answers a `signal` request with
 * killpg().
 *
 * ssh2's public `Channel.signal()` only sends while our side is still writable, and we always
 * send EOF on stdin first, so this goes to the protocol object directly. It is duck-typed: if a
 * future ssh2 moves it, we degrade to closing the channel.
 */
function killRemote(client: Ssh2Client, channel: ClientChannel): void {
  const protocol = (client as unknown as { _protocol?: { signal?: (id: number, name: string) => void } })._protocol;
  const outgoing = (channel as unknown as { outgoing?: { id?: number; state?: string } }).outgoing;
  if (typeof protocol?.signal !== 'function' || typeof outgoing?.id !== 'number') return;
  if (outgoing.state !== 'open' && outgoing.state !== 'eof') return;
  try {
    protocol.signal(outgoing.id, 'KILL');
  } catch {
    // the transport may be going away; closing the channel below is still right
  }
}

/** Keeps the last `limit` bytes of a stream. */
class Tail {
  private chunks: Buffer[] = [];
  private size = 0;
  private truncated = false;

  constructor(private readonly limit: number) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.chunks.length > 1 && this.size - this.chunks[0]!.length >= this.limit) {
      this.size -= this.chunks.shift()!.length;
      this.truncated = true;
    }
  }

  toString(): string {
    let buf = Buffer.concat(this.chunks);
    if (buf.length > this.limit) {
      buf = buf.subarray(buf.length - this.limit);
      this.truncated = true;
    }
    // A cut can land inside a UTF-8 sequence; drop its orphaned continuation bytes.
    if (this.truncated) {
      let i = 0;
      while (i < buf.length && i < 3 && (buf[i]! & 0xc0) === 0x80) i++;
      buf = buf.subarray(i);
    }
    return buf.toString('utf8');
  }
}

class Ssh2Connection implements SshConnection {
  readonly hostKeyFingerprint: string;
  private readonly channels: LimitFunction;
  private readonly where: string;
  private current: Handshaken;
  private dead = false;
  private closedByUs = false;
  private lastError: Error | undefined;
  /** running execs, told when the transport goes away */
  private readonly lossListeners = new Set<() => void>();
  /** one reconnect shared by every exec that finds the connection gone */
  private reconnecting: Promise<void> | null = null;

  constructor(
    first: Handshaken,
    private readonly target: SshTarget,
    maxChannels: number,
    private readonly reconnectTo: (target: SshTarget) => Promise<Handshaken>,
  ) {
    this.hostKeyFingerprint = first.fingerprint;
    this.where = describeTarget(target);
    this.channels = pLimit(maxChannels);
    this.current = first;
    this.attach(first.client);
  }

  private get client(): Ssh2Client {
    return this.current.client;
  }

  private attach(client: Ssh2Client): void {
    client.on('error', (err: Error) => {
      if (client === this.client) this.lastError = err;
    });
    const onGone = () => {
      if (client === this.client) this.markGone();
    };
    client.on('end', onGone);
    client.on('close', onGone);
  }

  /** The current transport is gone: running execs are told, the next exec reconnects. */
  private markGone(): void {
    if (this.dead) return;
    this.dead = true;
    for (const listener of [...this.lossListeners]) listener();
  }

  /**
   * A new transport to the same host, pinned to the key seen on first contact (or the recorded
   * one): a host that changed its key in between is refused like any other mismatch.
   */
  private reconnect(): Promise<void> {
    this.reconnecting ??= (async () => {
      try {
        const old = this.current;
        const next = await this.reconnectTo({ ...this.target, hostKeyFingerprint: this.target.hostKeyFingerprint ?? this.hostKeyFingerprint });
        if (this.closedByUs) {
          endChain(next);
          return;
        }
        endChain(old);
        this.current = next;
        this.lastError = undefined;
        this.dead = false;
        this.attach(next.client);
      } finally {
        this.reconnecting = null;
      }
    })();
    return this.reconnecting;
  }

  exec(command: string, opts: ExecOptions = {}): Promise<ExecResult> {
    return new Promise<ExecResult>((resolve, reject) => {
      // The slot is held until the channel is closed (or never opened), not merely until the
      // promise settles: a timed-out channel still counts against the server's MaxSessions.
      this.channels(async () => {
        // A connection found gone before the command was sent is re-established once and the
        // command sent over the new one: it cannot have run. One lost while the command ran is
        // reported (ssh_connection_lost; it may have run) and re-established by the next exec.
        let reconnected = false;
        for (;;) {
          if (this.closedByUs) {
            reject(this.lostError(command));
            return;
          }
          if (this.dead) {
            if (reconnected) {
              reject(this.lostError(command));
              return;
            }
            reconnected = true;
            try {
              await this.reconnect();
            } catch (e) {
              reject(this.reconnectError(command, e));
              return;
            }
            continue;
          }
          const sent = await this.runChannel(command, opts, resolve, reject);
          if (sent) return;
          // ssh2 said "Not connected" before anything went out: the loss event may still be on
          // its way, so treat the transport as gone now.
          this.markGone();
        }
      }).catch(reject);
    });
  }

  close(): void {
    if (this.closedByUs) return;
    this.closedByUs = true;
    endChain(this.current);
  }

  private reconnectError(command: string, err: unknown): DirectorError {
    const e = err instanceof DirectorError ? err : undefined;
    const why = err instanceof Error ? err.message : String(err);
    return new DirectorError(e?.code ?? 'ssh_connection_lost', 'infrastructure', `SSH connection to ${this.where} was lost before running ${JSON.stringify(command.slice(0, 80))} and reconnecting failed: ${why}`, {
      hint: e?.hint ?? 'The VM may have rebooted, been deleted, or lost network. Check the VM, then retry.',
      cause: err,
    });
  }

  private lostError(command: string): DirectorError {
    const why = this.closedByUs ? 'the director closed the connection' : (this.lastError?.message ?? 'the server closed the connection');
    return new DirectorError('ssh_connection_lost', 'infrastructure', `SSH connection to ${this.where} was lost while running ${JSON.stringify(command.slice(0, 80))}: ${why}`, {
      hint: 'The VM may have rebooted, been deleted, or lost network; the command may or may not have completed. Check the VM, then retry.',
      cause: this.lastError,
    });
  }

  /**
   * Runs one command on the current transport. Resolves (releasing the channel slot) with false
   * when nothing was sent because the transport was already gone (the caller reconnects and
   * resends), true otherwise, the outcome having gone to resolve/reject.
   */
  private runChannel(command: string, opts: ExecOptions, resolve: (r: ExecResult) => void, reject: (e: Error) => void): Promise<boolean> {
    return new Promise<boolean>((done) => {
      const releaseSlot = () => done(true);
      const client = this.client;
      const timeoutMs = opts.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS;
      const stdout = new Tail(OUTPUT_TAIL_BYTES);
      const stderr = new Tail(OUTPUT_TAIL_BYTES);
      const decoders = { stdout: new StringDecoder('utf8'), stderr: new StringDecoder('utf8') };
      let code: number | null = null;
      let signal: string | null = null;
      let exited = false;
      let channel: ClientChannel | undefined;
      let settled = false;
      let timer: NodeJS.Timeout | undefined;

      const result = (): ExecResult => ({ code, signal, stdout: stdout.toString(), stderr: stderr.toString() });
      const settle = (outcome: { ok: ExecResult } | { err: Error }) => {
        if (settled) return;
        settled = true;
        if (timer) clearTimeout(timer);
        this.lossListeners.delete(onLost);
        if (typeof opts.stdin === 'object' && !Buffer.isBuffer(opts.stdin) && channel) opts.stdin.unpipe(channel);
        if ('ok' in outcome) resolve(outcome.ok);
        else reject(outcome.err);
      };
      const closeChannel = () => {
        if (!channel) return; // closed as soon as it opens, see below
        killRemote(client, channel);
        channel.close();
        releaseSlot();
      };
      const onLost = () => {
        // The exit status may have arrived in the same packets as the disconnect.
        if (exited) settle({ ok: result() });
        else settle({ err: this.lostError(command) });
        releaseSlot();
      };
      this.lossListeners.add(onLost);

      if (Number.isFinite(timeoutMs)) {
        timer = setTimeout(() => {
          settle({
            err: new DirectorError('ssh_exec_timeout', 'infrastructure', `command ${JSON.stringify(command.slice(0, 80))} on ${this.where} did not finish within ${timeoutMs} ms`, {
              hint: 'The command was killed. If it is legitimately slow, raise its timeout; otherwise look at what it waits for on the VM (its output so far is in the task log).',
            }),
          });
          closeChannel();
        }, timeoutMs);
      }

      const emit = (stream: 'stdout' | 'stderr', text: string) => {
        if (!opts.onOutput || text === '' || settled) return;
        try {
          opts.onOutput(stream, text);
        } catch (e) {
          // A throwing callback is the caller's bug; surface it instead of losing the channel.
          settle({ err: e as Error });
          closeChannel();
        }
      };

      try {
        client.exec(command, (err, ch) => {
          if (err) {
            if (this.dead) onLost();
            else {
              settle({
                err: new DirectorError('ssh_exec_failed', 'infrastructure', `${this.where} refused to start ${JSON.stringify(command.slice(0, 80))}: ${err.message}`, {
                  hint: 'The server refused a new session channel; it may limit sessions per connection (OpenSSH MaxSessions) below what the director uses.',
                  cause: err,
                }),
              });
              releaseSlot();
            }
            return;
          }
          channel = ch;
          if (settled) {
            // Timed out (or the connection died) while the channel was being opened.
            closeChannel();
            return;
          }
          ch.on('error', (e: Error) => {
            this.lastError = e;
          });
          ch.stderr.on('error', () => {});
          ch.on('data', (chunk: Buffer) => {
            stdout.push(chunk);
            emit('stdout', decoders.stdout.write(chunk));
          });
          ch.stderr.on('data', (chunk: Buffer) => {
            stderr.push(chunk);
            emit('stderr', decoders.stderr.write(chunk));
          });
          ch.on('exit', (c: number | null, s?: string) => {
            exited = true;
            code = typeof c === 'number' ? c : null;
            signal = s ?? null;
          });
          const finish = () => {
            emit('stdout', decoders.stdout.end());
            emit('stderr', decoders.stderr.end());
            if (!exited && this.dead) settle({ err: this.lostError(command) });
            else settle({ ok: result() });
            releaseSlot();
          };
          ch.on('close', () => {
            // 'close' follows stdout's end but not necessarily stderr's.
            if (ch.stderr.readableEnded || ch.stderr.destroyed) finish();
            else ch.stderr.once('end', finish);
          });

          const input = opts.stdin;
          if (input === undefined) ch.end();
          else if (typeof input === 'string' || Buffer.isBuffer(input)) ch.end(input);
          else {
            (input as Readable).once('error', (e: Error) => {
              settle({
                err: new DirectorError('ssh_exec_failed', 'infrastructure', `reading stdin for ${JSON.stringify(command.slice(0, 80))} on ${this.where} failed: ${e.message}`, { cause: e }),
              });
              closeChannel();
            });
            (input as Readable).pipe(ch);
          }
        });
      } catch (e) {
        // ssh2 throws synchronously when the socket is no longer writable: nothing was sent.
        if (this.dead || (e instanceof Error && e.message === 'Not connected')) {
          settled = true;
          if (timer) clearTimeout(timer);
          this.lossListeners.delete(onLost);
          done(false);
        } else {
          settle({ err: e as Error });
          releaseSlot();
        }
      }
    });
  }
}
