/**
 * Running the real CLI under a pseudo-terminal, for tests of what an operator sees on a TTY: the
 * live status line redrawn in place, colour. util-linux `script` when present, else tmux.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './cli.js';

export type PtyTool = 'script' | 'tmux';

/** Which pty runner this machine has, or why there is none. */
export function detectPty(): { tool: PtyTool } | { tool: null; reason: string } {
  try {
    if (/util-linux/.test(execFileSync('script', ['-V'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }))) return { tool: 'script' };
  } catch {
    // not installed, or not util-linux's
  }
  try {
    execFileSync('tmux', ['-V'], { stdio: 'ignore' });
    return { tool: 'tmux' };
  } catch {
    return { tool: null, reason: "neither util-linux `script` nor `tmux` is installed (Debian: apt-get install bsdutils, or tmux)" };
  }
}

const shq = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

export interface PtyResult {
  code: number | null;
  /** everything the terminal received, raw: escape sequences, `\r`, the pty's `\r\n` */
  raw: string;
}

/**
 * Runs `director ARGS` with its stdin and stdout on a pseudo-terminal and returns the raw bytes
 * written to it. `env` is merged over the environment; a key set to undefined is removed.
 */
export async function runInPty(tool: PtyTool, args: string[], opts: { home: string; cwd: string; env?: Record<string, string | undefined>; timeoutMs?: number }): Promise<PtyResult> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, DIRECTOR_HOME: opts.home, ...opts.env })) if (v !== undefined) env[k] = v;
  const command = [process.execPath, join(ROOT, 'bin', 'director.js'), ...args].map(shq).join(' ');
  const timeoutMs = opts.timeoutMs ?? 60_000;
  if (tool === 'script') {
    return new Promise((resolve, reject) => {
      const child = spawn('script', ['-qfec', command, '/dev/null'], { cwd: opts.cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
      let raw = '';
      child.stdout.on('data', (d) => (raw += d));
      child.stderr.on('data', (d) => (raw += d));
      const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`pty run timed out:\n${raw}`)); }, timeoutMs);
      child.on('error', reject);
      child.on('close', (code) => { clearTimeout(timer); resolve({ code, raw }); });
    });
  }
  // tmux: a detached session whose pane output is piped, raw, to a file.
  const dir = mkdtempSync(join(tmpdir(), 'director-pty-'));
  const socket = join(dir, 'tmux.sock');
  const out = join(dir, 'out');
  const rc = join(dir, 'rc');
  const tmux = (...a: string[]) => execFileSync('tmux', ['-S', socket, ...a], { env, cwd: opts.cwd, stdio: 'ignore' });
  try {
    tmux('new-session', '-d', '-x', '200', '-y', '50', 'sh');
    tmux('pipe-pane', '-o', `cat > ${shq(out)}`);
    tmux('send-keys', `cd ${shq(opts.cwd)}; ${command}; echo $? > ${shq(rc)}; tmux -S ${shq(socket)} wait-for -S done`, 'Enter');
    await new Promise<void>((resolve, reject) => {
      const w = spawn('tmux', ['-S', socket, 'wait-for', 'done'], { stdio: 'ignore' });
      const timer = setTimeout(() => { w.kill(); reject(new Error('pty run timed out')); }, timeoutMs);
      w.on('close', () => { clearTimeout(timer); resolve(); });
    });
    await new Promise((r) => setTimeout(r, 200));
    const raw = readFileSync(out, 'utf8');
    return { code: Number(readFileSync(rc, 'utf8').trim()), raw };
  } finally {
    try { tmux('kill-server'); } catch { /* already gone */ }
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Strip colour and erase sequences: what the characters are, not how they look. */
export const stripAnsi = (s: string) => s.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');

/**
 * What stays on the screen, line by line: within a line, a `\r` returns to its start and the
 * text after it overwrites what was there (the director clears the line before redrawing, so
 * the last segment is what remains).
 */
export function visibleLines(raw: string): string[] {
  return raw.split('\n').map((line) => {
    const l = line.endsWith('\r') ? line.slice(0, -1) : line;
    const segments = l.split('\r');
    return stripAnsi(segments[segments.length - 1] ?? '');
  });
}
