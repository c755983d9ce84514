/**
 * The instance port: how the executor acts on one instance's VM. The SSH adapter
 * (ssh-driver.ts) runs the on-VM ctl script over one reused connection; the sim provider's adapter
 * acts on in-memory VMs. The executor never knows which, so the rollout engine is tested and
 * benchmarked at 1000 instances without sockets.
 */
import { DirectorError } from '../errors.js';
import type { HealthCheckDef } from '../manifest/types.js';
import type { VmRow } from '../state/store.js';

export type InstanceStep = 'connect' | 'install' | 'drain' | 'stop' | 'apply' | 'start' | 'health' | 'create_vm' | 'delete_vm' | 'rollback';

export interface JobStatus {
  job: string;
  state: 'running' | 'stopped' | 'failed';
  pid: number | null;
}

export type LogFn = (stream: 'stdout' | 'stderr' | 'director', text: string) => void;

export interface CheckResult {
  ok: boolean;
  detail: string;
}

/** One generation of what an instance runs; the archive is built only by drivers that upload it. */
export interface GenerationRef {
  id: string;
  archive(): Promise<Buffer>;
  /** unpack again even if the VM has this generation: its files drifted (repair) */
  force?: boolean;
}

/** A live session with one instance's VM, held for the whole update of that instance. */
export interface InstanceHandle {
  /** the host key seen, for pinning on first contact (SSH only) */
  readonly hostKeyFingerprint?: string;
  /** how often to poll health at first; watches back off from here */
  readonly healthPollMs: number;
  prepare(opts: { bootHook: boolean }): Promise<void>;
  drain(): Promise<void>;
  stop(): Promise<void>;
  /** unpack (if new) and make it current, keeping the one it replaces as the rollback target */
  apply(gen: GenerationRef): Promise<void>;
  /** make an already-present generation current again; false when the VM no longer has it */
  activate(generationId: string): Promise<boolean>;
  start(): Promise<void>;
  status(): Promise<JobStatus[]>;
  jobLogTail(job: string, lines: number): Promise<string[]>;
  check(def: HealthCheckDef, target: { address: string; properties: Record<string, unknown> }): Promise<CheckResult>;
  /**
   * sha256 of every file of the current generation, keyed like Generation.checksums
   * (`jobs/web/bin/start`), for drift detection; undefined where a driver has no files (sim).
   */
  fileChecksums?(): Promise<Record<string, string>>;
  close(): void;
}

export interface InstanceConnector {
  open(vm: VmRow, opts: { label: string; baseDir: string; log: LogFn }): Promise<InstanceHandle>;
}

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
