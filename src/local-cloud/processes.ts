/**
 * Finding and killing a local VM's processes. Every process a VM starts inherits
 * `DIRECTOR_LOCAL_VM=<cid>`; jobs detach with setsid, so neither the process tree nor process
 * groups lead back to the VM, and after a supervisor restart there is no tree at all. The
 * environment marker survives both, so /proc/<pid>/environ is the source of truth.
 */
import { readdir, readFile } from 'node:fs/promises';
import { isProcessAlive } from './protocol.js';

export const VM_ENV_MARKER = 'DIRECTOR_LOCAL_VM';

/** pid → cid for every live process (other than this one) whose environment names one of `cids`. */
export async function findVmProcesses(cids: ReadonlySet<string>): Promise<Map<number, string>> {
  const found = new Map<number, string>();
  if (cids.size === 0) return found;
  let entries: string[];
  try {
    entries = await readdir('/proc');
  } catch {
    return found; // no procfs (not Linux): nothing we can find
  }
  const prefix = `${VM_ENV_MARKER}=`;
  await Promise.all(
    entries.map(async (name) => {
      const pid = Number(name);
      if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return;
      let environ: Buffer;
      try {
        environ = await readFile(`/proc/${pid}/environ`);
      } catch {
        return; // gone, or not ours to read
      }
      // A zombie's environ reads as empty, so exited processes drop out here by themselves.
      for (const entry of environ.toString('utf8').split('\0')) {
        if (entry.startsWith(prefix)) {
          const cid = entry.slice(prefix.length);
          if (cids.has(cid)) found.set(pid, cid);
          break;
        }
      }
    }),
  );
  return found;
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * SIGTERM every process of the given VMs, wait for them to go (zombies count as gone: orphans are
 * reaped lazily on these machines), SIGKILL what is left after `graceMs`. Rescans while waiting,
 * because a dying job's shell may still fork. Returns the pids that were signalled.
 */
export async function killVmProcesses(
  cids: ReadonlySet<string>,
  opts: { graceMs?: number; giveUpMs?: number } = {},
): Promise<number[]> {
  const graceMs = opts.graceMs ?? 5000;
  const giveUpMs = opts.giveUpMs ?? graceMs + 5000;
  const start = Date.now();
  const termed = new Set<number>();
  for (;;) {
    const live = [...(await findVmProcesses(cids)).keys()].filter(isProcessAlive);
    if (live.length === 0) return [...termed];
    const elapsed = Date.now() - start;
    if (elapsed > giveUpMs) {
      throw new Error(`processes ${live.join(', ')} survived SIGKILL for ${giveUpMs - graceMs} ms`);
    }
    for (const pid of live) {
      if (elapsed >= graceMs) signal(pid, 'SIGKILL');
      else if (!termed.has(pid)) signal(pid, 'SIGTERM');
      termed.add(pid);
    }
    // Poll the known pids cheaply and rescan /proc only every few rounds.
    for (let i = 0; i < 4; i++) {
      await sleep(25);
      if (live.every((pid) => !isProcessAlive(pid))) break;
    }
  }
}
