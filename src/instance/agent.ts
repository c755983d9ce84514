/**
 * The lifecycle of one instance over one SSH connection: install ctl, drain, stop, apply a
 * generation, start, read job state. Every command and every line it prints goes to the
 * instance's task log; a failing step raises an error naming the step and the output's tail.
 */
import { DirectorError, infraError } from '../errors.js';
import { runCheck } from '../health/checks.js';
import type { HealthCheckDef } from '../manifest/types.js';
import { shq } from '../ssh/quote.js';
import type { ExecResult, SshConnection, SshConnector } from '../ssh/types.js';
import type { VmRow } from '../state/store.js';
import { CTL_SCRIPT } from './ctl-script.js';
import {
  StepError,
  type CheckResult,
  type GenerationRef,
  type InstanceConnector,
  type InstanceHandle,
  type InstanceStep,
  type JobStatus,
  type LogFn,
} from './driver.js';

export { StepError };
export type { InstanceStep, JobStatus, LogFn };

/** Opens one SSH connection per instance update, reused for every command of it. */
export class SshInstanceConnector implements InstanceConnector {
  constructor(private readonly ssh: SshConnector, private readonly privateKey: string) {}

  async open(vm: VmRow, opts: { label: string; baseDir: string; log: LogFn }): Promise<InstanceHandle> {
    try {
      const conn = await this.ssh.connect({
        host: vm.sshHost,
        port: vm.sshPort,
        username: vm.sshUser,
        privateKey: this.privateKey,
        hostKeyFingerprint: vm.hostKey ?? undefined,
        label: `${opts.label} (${vm.sshHost})`,
      });
      return new InstanceAgent(conn, opts.baseDir, opts.log);
    } catch (err) {
      const e = err instanceof DirectorError ? err : infraError('ssh_unreachable', String(err), { cause: err });
      throw new StepError('connect', 'infrastructure', e.code, e.message, [], { hint: e.hint, cause: err });
    }
  }
}

interface RunOptions {
  stdin?: Buffer | string;
  timeoutMs?: number;
  display?: string;
  /** safe to run twice: retried once over a fresh connection when the connection is lost */
  idempotent?: boolean;
}

const tail = (text: string, n = 10) => text.split('\n').filter((l) => l.trim() !== '').slice(-n);

export class InstanceAgent implements InstanceHandle {
  readonly healthPollMs = 50;

  constructor(
    private readonly conn: SshConnection,
    /** the director's base directory on the VM, relative to the SSH user's home or absolute */
    private readonly baseDir: string,
    private readonly log: LogFn,
  ) {}

  private base(): string {
    // Relative paths are relative to $HOME; "$HOME" must stay outside the quotes to expand.
    return this.baseDir.startsWith('/') ? shq(this.baseDir) : `"$HOME"/${shq(this.baseDir)}`;
  }

  async run(step: InstanceStep, command: string, opts: RunOptions = {}): Promise<ExecResult> {
    this.log('director', `$ ${opts.display ?? command}`);
    let result: ExecResult;
    for (let attempt = 1; ; attempt++) {
      try {
        result = await this.conn.exec(command, {
          stdin: opts.stdin,
          timeoutMs: opts.timeoutMs,
          onOutput: (stream, chunk) => this.log(stream, chunk),
        });
        break;
      } catch (err) {
        const e = err instanceof DirectorError ? err : infraError('ssh_exec_failed', String(err), { cause: err });
        this.log('director', `! ${e.message}`);
        // An idempotent ctl operation whose connection dropped while it ran (it may or may not
        // have run) is simply run again; the connection re-establishes itself on the next exec.
        if (opts.idempotent && attempt === 1 && e.code === 'ssh_connection_lost') {
          this.log('director', `reconnecting and running it again (idempotent)`);
          continue;
        }
        throw new StepError(step, 'infrastructure', e.code, e.message, [], { hint: e.hint, cause: err });
      }
    }
    this.log('director', `exit ${result.code ?? result.signal}`);
    return result;
  }

  private async must(step: InstanceStep, command: string, opts: RunOptions = {}): Promise<ExecResult> {
    const result = await this.run(step, command, opts);
    if (result.code !== 0) {
      const lines = tail(`${result.stdout}\n${result.stderr}`);
      throw new StepError(step, 'application', `${step}_failed`, `${step} failed (exit ${result.code ?? result.signal})${lines.length ? `: ${lines[lines.length - 1]}` : ''}`, lines);
    }
    return result;
  }

  get hostKeyFingerprint(): string {
    return this.conn.hostKeyFingerprint;
  }

  close(): void {
    this.conn.close();
  }

  async prepare(opts: { bootHook: boolean }): Promise<void> {
    const bootHook = opts.bootHook;
    const b = this.base();
    let cmd = `mkdir -p ${b}/bin ${b}/gen ${b}/run ${b}/log && cat > ${b}/bin/ctl.tmp && chmod 755 ${b}/bin/ctl.tmp && mv -f ${b}/bin/ctl.tmp ${b}/bin/ctl`;
    if (bootHook) {
      // The local cloud runs ~/etc/rc.local when it boots a VM: jobs come back after a restart.
      cmd += ` && mkdir -p "$HOME/etc" && printf '#!/bin/sh\\nexec %s start\\n' ${shq(this.baseDir.startsWith('/') ? `${this.baseDir}/bin/ctl` : `$HOME/${this.baseDir}/bin/ctl`)} > "$HOME/etc/rc.local" && chmod 755 "$HOME/etc/rc.local"`;
    }
    await this.must('install', cmd, { stdin: CTL_SCRIPT, display: `install ${this.baseDir}/bin/ctl` });
  }

  async drain(timeoutMs = 10 * 60_000): Promise<void> {
    await this.must('drain', `${this.base()}/bin/ctl drain`, { timeoutMs, idempotent: true });
  }

  async stop(timeoutMs = 2 * 60_000): Promise<void> {
    await this.must('stop', `${this.base()}/bin/ctl stop`, { timeoutMs, idempotent: true });
  }

  /**
   * Unpacks a generation (idempotent: an existing complete one is kept) and points `current` at
   * it, keeping the generation it replaces as `previous` so a rollback is a switch and a restart.
   * Generations other than those two are pruned.
   */
  async apply(generation: GenerationRef): Promise<void> {
    const genId = generation.id;
    const archive = await generation.archive();
    const b = this.base();
    const gen = `${b}/gen/${shq(genId)}`;
    const script = [
      `set -e`,
      generation.force ? `rm -rf ${gen}` : `true`,
      `if [ ! -e ${gen}/.complete ]; then rm -rf ${gen}.tmp; mkdir -p ${gen}.tmp; tar -xzf - -C ${gen}.tmp; touch ${gen}.tmp/.complete; rm -rf ${gen}; mv ${gen}.tmp ${gen}; else cat >/dev/null; fi`,
      `old=$(readlink ${b}/current 2>/dev/null || true)`,
      `if [ -n "$old" ] && [ "$old" != gen/${shq(genId)} ]; then ln -sfn "$old" ${b}/previous.tmp && mv -Tf ${b}/previous.tmp ${b}/previous; fi`,
      `ln -sfn gen/${shq(genId)} ${b}/current.tmp && mv -Tf ${b}/current.tmp ${b}/current`,
      `keep_prev=$(readlink ${b}/previous 2>/dev/null || true)`,
      `for g in ${b}/gen/*; do n=gen/$(basename "$g"); [ "$n" = gen/${shq(genId)} ] || [ "$n" = "$keep_prev" ] || rm -rf "$g"; done`,
      `echo "current -> gen/${genId}"`,
    ].join('\n');
    await this.must('apply', script, { stdin: archive, display: `apply generation ${genId} (${archive.length} bytes)` });
  }

  async activate(generationId: string): Promise<boolean> {
    const b = this.base();
    const gen = `gen/${shq(generationId)}`;
    const script = [
      `if [ ! -e ${b}/${gen}/.complete ]; then echo missing; exit 0; fi`,
      `old=$(readlink ${b}/current 2>/dev/null || true)`,
      `if [ -n "$old" ] && [ "$old" != ${gen} ]; then ln -sfn "$old" ${b}/previous.tmp && mv -Tf ${b}/previous.tmp ${b}/previous; fi`,
      `ln -sfn ${gen} ${b}/current.tmp && mv -Tf ${b}/current.tmp ${b}/current`,
      `echo "current -> ${gen}"`,
    ].join('\n');
    const r = await this.must('rollback', script, { display: `activate generation ${generationId}` });
    return !r.stdout.includes('missing');
  }

  async fileChecksums(): Promise<Record<string, string>> {
    const r = await this.must('health', `cd ${this.base()}/current && find jobs -type f -exec sha256sum {} +`, { display: 'checksum the current generation' });
    const sums: Record<string, string> = {};
    for (const line of r.stdout.split('\n')) {
      const m = /^([0-9a-f]{64})\s+\*?(.+)$/.exec(line.trim());
      if (m) sums[m[2]!] = m[1]!;
    }
    return sums;
  }

  check(def: HealthCheckDef, target: { address: string; properties: Record<string, unknown> }): Promise<CheckResult> {
    return runCheck(def, { ...target, exec: (cmd, timeoutMs) => this.run('health', cmd, { timeoutMs }) });
  }

  async start(timeoutMs = 5 * 60_000): Promise<void> {
    await this.must('start', `${this.base()}/bin/ctl start`, { timeoutMs, idempotent: true });
  }

  async status(): Promise<JobStatus[]> {
    const result = await this.run('health', `if [ -x ${this.base()}/bin/ctl ]; then ${this.base()}/bin/ctl status; fi`, { timeoutMs: 30_000, idempotent: true });
    if (result.code !== 0) throw new StepError('health', 'infrastructure', 'status_failed', `reading job status failed (exit ${result.code})`, tail(result.stderr));
    return parseStatus(result.stdout);
  }

  /** Last lines of a job's stderr log, for failure reports. */
  async jobLogTail(job: string, lines = 20): Promise<string[]> {
    const r = await this.run('health', `tail -n ${lines} ${this.base()}/log/${shq(`${job}.stderr.log`)} 2>/dev/null || true`, { timeoutMs: 15_000 });
    return tail(r.stdout, lines);
  }
}

export function parseStatus(stdout: string): JobStatus[] {
  return stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((parts) => parts.length === 3 && ['running', 'stopped', 'failed'].includes(parts[1]!))
    .map(([job, state, pid]) => ({ job: job!, state: state as JobStatus['state'], pid: pid === '-' ? null : Number(pid) }));
}

