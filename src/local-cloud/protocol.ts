/**
 * What the local-cloud supervisor and its clients share: file layout under the director home and
 * the JSON shapes of the control API. Kept free of runtime dependencies so the client side stays
 * cheap to import.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';

export const DEFAULT_SSH_PORT = 2222;

/** `<state>` of a VM record: `running` once its SSH endpoint listens. */
export type LocalVmState = 'running' | 'stopped';

/** A VM as the control API returns it. */
export interface LocalVmRecord {
  cid: string;
  ip: string;
  ssh_port: number;
  ssh_user: string;
  /** `SHA256:<base64, no padding>`, the form `ssh-keygen -lf` prints */
  host_key_fingerprint: string;
  tags: Record<string, string>;
  created_at: string;
  /** the VM's root directory: its HOME and the cwd of its commands */
  root: string;
  state: LocalVmState;
  /** why the VM is not running (e.g. its address could not be bound on boot) */
  error?: string;
}

export interface LocalCloudStatus {
  pid: number;
  home: string;
  started_at: string;
  subnet: string;
  ssh_port: number;
  vms: number;
}

export interface CreateVmBody {
  tags?: Record<string, string>;
  authorized_keys: string[];
}

/** Contents of supervisor.json: how a client finds and authenticates to the running supervisor. */
export interface SupervisorInfo {
  pid: number;
  port: number;
  token: string;
  started_at: string;
}

export interface LocalCloudPaths {
  home: string;
  dir: string;
  state: string;
  info: string;
  log: string;
  startLock: string;
  vms: string;
}

export function localCloudPaths(home: string): LocalCloudPaths {
  const abs = path.resolve(home);
  const dir = path.join(abs, 'local-cloud');
  return {
    home: abs,
    dir,
    state: path.join(dir, 'state.json'),
    info: path.join(dir, 'supervisor.json'),
    log: path.join(dir, 'supervisor.log'),
    startLock: path.join(dir, 'start.lock'),
    vms: path.join(dir, 'vms'),
  };
}

/**
 * Name of the Linux abstract unix socket a supervisor binds to claim its home. The kernel drops it
 * when the process dies, so unlike a pid file it can never go stale: whatever race the clients'
 * start lock loses, at most one supervisor per home survives.
 */
export function singletonSocketName(home: string): string {
  const h = createHash('sha256').update(path.resolve(home)).digest('hex').slice(0, 24);
  return `\0director-local-cloud-${h}`;
}

/** True when `pid` names a live process; a zombie (exited, not yet reaped) counts as gone. */
export function isProcessAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (e) {
    // EPERM: it exists but belongs to someone else.
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const state = processState(pid);
  return state !== null && state !== 'Z' && state !== 'X' && state !== 'x';
}

/** The state letter from /proc/PID/stat (R, S, D, Z, …), or null if there is no such process. */
export function processState(pid: number): string | null {
  let stat: string;
  try {
    // Synchronous on purpose: /proc reads never wait on a disk, and callers poll in tight loops.
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name is in parentheses and may itself contain spaces or ')'.
  const close = stat.lastIndexOf(')');
  return stat.slice(close + 2, close + 3) || null;
}

/** main.js exit status when another supervisor already holds the home: the caller should just connect. */
export const EXIT_ALREADY_RUNNING = 3;
