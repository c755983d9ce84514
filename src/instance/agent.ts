/**
 * The lifecycle of one instance over one SSH connection: install ctl, drain, stop, apply a
 * generation, start, read job state. Every command and every line it prints goes to the
 * instance's task log; a failing step raises an error naming the step and the output's tail.
 */
import { DirectorError, infraError } from '../errors.js';
import { shq } from '../ssh/quote.js';
import type { ExecResult, SshConnection } from '../ssh/types.js';
import { CTL_SCRIPT } from './ctl-script.js';

export type InstanceStep = 'connect' | 'install' | 'drain' | 'stop' | 'apply' | 'start' | 'health' | 'create_vm' | 'delete_vm';

export interface JobStatus {
  job: string;
  state: 'running' | 'stopped' | 'failed';
  pid: number | null;
}

export type LogFn = (stream: 'stdout' | 'stderr' | 'director', text: string) => void;

/** An instance step that failed, with what an operator needs to act on it. */
export class StepError extends DirectorError {
  constructor(
    readonly step: InstanceStep,
    errorClass: 'infrastructure' | 'application',
    code: string,
    message: string,
    readonly logTail: string[] = [],
    opts: { hint?: string; cause?: unknown } = {},
  ) {
    super(code, errorClass, message, opts);
  }
}

const tail = (text: string, n = 10) => text.split('\n').filter((l) => l.trim() !== '').slice(-n);

export class InstanceAgent {
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

  async run(step: InstanceStep, command: string, opts: { stdin?: Buffer | string; timeoutMs?: number; display?: string } = {}): Promise<ExecResult> {
    this.log('director', `$ ${opts.display ?? command}`);
    let result: ExecResult;
    try {
      result = await this.conn.exec(command, {
        stdin: opts.stdin,
        timeoutMs: opts.timeoutMs,
        onOutput: (stream, chunk) => this.log(stream, chunk),
      });
    } catch (err) {
      const e = err instanceof DirectorError ? err : infraError('ssh_exec_failed', String(err), { cause: err });
      this.log('director', `! ${e.message}`);
      throw new StepError(step, 'infrastructure', e.code, e.message, [], { hint: e.hint, cause: err });
    }
    this.log('director', `exit ${result.code ?? result.signal}`);
    return result;
  }

  private async must(step: InstanceStep, command: string, opts: { stdin?: Buffer | string; timeoutMs?: number; display?: string } = {}): Promise<ExecResult> {
    const result = await this.run(step, command, opts);
    if (result.code !== 0) {
      const lines = tail(`${result.stdout}\n${result.stderr}`);
      throw new StepError(step, 'application', `${step}_failed`, `${step} failed (exit ${result.code ?? result.signal})${lines.length ? `: ${lines[lines.length - 1]}` : ''}`, lines);
    }
    return result;
  }

  async installCtl(bootHook: boolean): Promise<void> {
    const b = this.base();
    let cmd = `mkdir -p ${b}/bin ${b}/gen ${b}/run ${b}/log && cat > ${b}/bin/ctl.tmp && chmod 755 ${b}/bin/ctl.tmp && mv -f ${b}/bin/ctl.tmp ${b}/bin/ctl`;
    if (bootHook) {
      // The local cloud runs ~/etc/rc.local when it boots a VM: jobs come back after a restart.
      cmd += ` && mkdir -p "$HOME/etc" && printf '#!/bin/sh\\nexec %s start\\n' ${shq(this.baseDir.startsWith('/') ? `${this.baseDir}/bin/ctl` : `$HOME/${this.baseDir}/bin/ctl`)} > "$HOME/etc/rc.local" && chmod 755 "$HOME/etc/rc.local"`;
    }
    await this.must('install', cmd, { stdin: CTL_SCRIPT, display: `install ${this.baseDir}/bin/ctl` });
  }

  async drain(timeoutMs = 10 * 60_000): Promise<void> {
    await this.must('drain', `${this.base()}/bin/ctl drain`, { timeoutMs });
  }

  async stop(timeoutMs = 2 * 60_000): Promise<void> {
    await this.must('stop', `${this.base()}/bin/ctl stop`, { timeoutMs });
  }

  /**
   * Unpacks a generation (idempotent: an existing complete one is kept) and points `current` at
   * it, keeping the generation it replaces as `previous` so a rollback is a switch and a restart.
   * Generations other than those two are pruned.
   */
  async apply(genId: string, archive: Buffer): Promise<void> {
    const b = this.base();
    const gen = `${b}/gen/${shq(genId)}`;
    const script = [
      `set -e`,
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

  async start(timeoutMs = 5 * 60_000): Promise<void> {
    await this.must('start', `${this.base()}/bin/ctl start`, { timeoutMs });
  }

  async status(): Promise<JobStatus[]> {
    const result = await this.run('health', `if [ -x ${this.base()}/bin/ctl ]; then ${this.base()}/bin/ctl status; fi`, { timeoutMs: 30_000 });
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

