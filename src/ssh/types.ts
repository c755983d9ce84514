/** What the rest of the director needs from SSH; src/ssh/connection.ts implements it on ssh2. */
import type { Readable } from 'node:stream';

export interface SshTarget {
  host: string;
  port: number;
  username: string;
  /** OpenSSH-format private key (the director's key, $DIRECTOR_HOME/keys/id_ed25519) */
  privateKey: string | Buffer;
  /**
   * `SHA256:<base64>` of the host key (as `ssh-keygen -lf` prints it). When set, any other key
   * is refused with code `ssh_host_key_mismatch`. When unset, the key seen is accepted and
   * reported in `SshConnection.hostKeyFingerprint` so the caller can pin it.
   */
  hostKeyFingerprint?: string;
  /** label for errors and logs, e.g. `web/3 (127.1.0.5)` */
  label?: string;
  /**
   * A jump host (bastion): the connector first opens an SSH connection to `jump`, asks it to
   * forward a TCP stream to `host:port` (a `direct-tcpip` channel, like `ssh -J`), and runs this
   * target's SSH over that stream. Both host keys are pinned independently.
   */
  jump?: SshTarget;
}

export interface ExecOptions {
  /** bytes written to the command's stdin, then EOF */
  stdin?: Buffer | string | Readable;
  /** kill the channel and fail with code `ssh_exec_timeout` after this long; default 10 minutes */
  timeoutMs?: number;
  /** called for each chunk of output as it arrives (for per-VM task logs) */
  onOutput?: (stream: 'stdout' | 'stderr', chunk: string) => void;
}

export interface ExecResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

export interface SshConnection {
  readonly hostKeyFingerprint: string;
  /** runs `command` through the remote user's shell; never rejects on a non-zero exit */
  exec(command: string, opts?: ExecOptions): Promise<ExecResult>;
  close(): void;
}

export interface SshConnector {
  connect(target: SshTarget): Promise<SshConnection>;
}
