/**
 * What `deploy` shows on a real terminal: the event lines scroll, one status line at the bottom is
 * redrawn in place, nothing of it is left glued to an event line, and the final summary stands on
 * its own. Runs the CLI under a pseudo-terminal (util-linux `script`, or tmux).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { detectPty, runInPty, stripAnsi, visibleLines } from '../helpers/cli-extra.js';
import { helloManifest, workspace } from '../helpers/cli.js';

const pty = detectPty();
if (!pty.tool) console.log(`skipping the terminal tests: ${pty.reason}`);

describe.skipIf(!pty.tool)('deploy on a terminal', () => {
  const ws = workspace('cli-tty');
  beforeAll(() => {
    ws.writeManifest(helloManifest({ instances: 3, canaryWatch: '600-15000', updateWatch: '600-15000' }));
  });
  afterAll(async () => {
    await ws.cleanup();
  });

  it('keeps one status line at the bottom, redrawn with \\r, events scrolling above it, then the summary', async () => {
    const r = await runInPty(pty.tool!, ['deploy', ws.manifest, '--yes'], { home: ws.home, cwd: ws.dir, env: { NO_COLOR: undefined, FORCE_COLOR: undefined } });
    expect(r.code, r.raw).toBe(0);
    const raw = r.raw;
    // Redrawn in place: every status is followed by \r + clear-line before anything else is written.
    const statuses = raw.split('\n').flatMap((line) => line.split('\r\x1b[2K')).map(stripAnsi).filter((seg) => seg.includes('in flight'));
    expect(new Set(statuses).size, raw).toBeGreaterThanOrEqual(3);
    expect([...raw.matchAll(/in flight[^\r\n]*\r\x1b\[2K/g)].length).toBe(statuses.length);
    expect(statuses).toContainEqual(expect.stringMatching(/^web: canaries · 1 in flight · 0\/3 done · 0 failed/));
    expect(statuses).toContainEqual(expect.stringMatching(/^web: wave 1\/1 · 2 in flight · 1\/3 done · 0 failed · ETA \d+s$/));
    // Colour on a terminal without NO_COLOR: finished in green.
    expect(raw).toContain('\x1b[32mfinished\x1b[0m');

    const screen = visibleLines(raw);
    // Nothing of the status line is left on the screen: each event line is clean.
    expect(screen.filter((l) => l.includes('in flight'))).toEqual([]);
    const eventLines = screen.filter((l) => /^\d\d:\d\d:\d\d {2}/.test(l));
    for (const l of eventLines) expect(l).toMatch(/^\d\d:\d\d:\d\d {2}(plan|canaries|rollout|update|deploy) +(web\/\d )?(started|finished): /);
    // Exactly the lines the plain output has for this task, in the same order.
    const task = Number(/Task (\d+) done in/.exec(screen.join('\n'))?.[1]);
    const plain = (await ws.cli(['task', String(task), '--events'])).stdout.trim().split('\n').filter((l) => !l.includes(' step: '));
    expect(eventLines).toEqual(plain);
    // The summary comes last, on lines of its own.
    const tail = screen.filter((l) => l.trim()).slice(-2);
    expect(tail[0]).toMatch(new RegExp(`^Task ${task} done in [\\d.]+ s: 3 instance\\(s\\) updated$`));
    expect(tail[1]).toBe('See the instances with: director vms -d hello');
  });

  it('NO_COLOR turns colour off on a terminal; FORCE_COLOR turns it on without one, with no status line', async () => {
    const r = await runInPty(pty.tool!, ['deploy', ws.manifest, '--yes'], { home: ws.home, cwd: ws.dir, env: { NO_COLOR: '1', FORCE_COLOR: undefined } });
    expect(r.code, r.raw).toBe(0);
    expect(r.raw).toContain('no changes');
    expect(r.raw).not.toMatch(/\x1b\[\d+m/);

    const tasks = JSON.parse((await ws.cli(['tasks', '--json'])).stdout) as { id: number }[];
    const forced = await ws.cli(['task', String(tasks.at(-1)!.id), '--follow'], { env: { NO_COLOR: '', FORCE_COLOR: '1' } });
    expect(forced.code).toBe(0);
    expect(forced.stdout).toContain('\x1b[32mfinished\x1b[0m');
    expect(forced.stdout).not.toContain('\x1b[2K');
    const plain = await ws.cli(['task', String(tasks.at(-1)!.id), '--follow']);
    expect(plain.stdout).not.toContain('\x1b[');
  });
});
