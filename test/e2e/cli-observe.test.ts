/**
 * The reading side of the CLI, against real deploys on the local cloud: following a running task
 * from a second process, filtering tasks, the cross-task event history, deployments and
 * instances, timelines, completion scripts and every command's --help.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { helloManifest, startCli, workspace } from '../helpers/cli.js';

interface EventJson { id: number; taskId: number; ts: string; stage: string; instance: string | null; state: string; message: string | null }
interface TaskJson { id: number; state: string; type: string; deployment: string | null }

describe('observing tasks from the CLI', () => {
  const ws = workspace('cli-obs');
  let followedTask = 0;
  let failedTask = 0;

  beforeAll(async () => {
    ws.writeManifest(helloManifest({ instances: 3 }));
    const r = await ws.cli(['deploy', ws.manifest, '--yes']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
  });
  afterAll(async () => {
    await ws.cleanup();
  });

  it('task N --follow in a second process streams a running deploy live, then exits 0 when it is done', async () => {
    // One at a time, each watched for 800 ms: about 3 s of rollout to watch.
    ws.writeManifest(helloManifest({ instances: 3, greeting: 'Followed', maxInFlight: 1, canaryWatch: '800-15000', updateWatch: '800-15000' }));
    const deploy = startCli(['deploy', ws.manifest, '--yes', '--json'], { home: ws.home, cwd: ws.dir });
    let deployExited = false;
    void deploy.exited.then(() => (deployExited = true));
    const first = await deploy.waitForEvent((e) => e.stage === 'update' && e.state === 'started');
    followedTask = first.taskId as number;

    const follower = startCli(['task', String(followedTask), '--follow', '--json'], { home: ws.home, cwd: ws.dir });
    const textFollower = startCli(['task', String(followedTask), '--follow'], { home: ws.home, cwd: ws.dir });
    // web/2 starts last and is then watched for at least 800 ms: seen live, before the deploy ends.
    const live = await follower.waitForEvent((e) => e.instance === 'web/2' && e.state === 'started', 20_000);
    expect(deployExited).toBe(false);
    expect(live.taskId).toBe(followedTask);

    expect(await deploy.exited).toBe(0);
    expect(await follower.exited).toBe(0);
    expect(await textFollower.exited).toBe(0);

    const lines = follower.stdout().trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.at(-1)).toEqual({ task: followedTask, state: 'done', result: '3 instance(s) updated', error: null });
    // Every event of the task, once each, in order: the same rows `task N --json` has.
    const streamed = lines.slice(0, -1).map((e) => e.id as number);
    const recorded = (JSON.parse((await ws.cli(['task', String(followedTask), '--json'])).stdout) as { events: EventJson[] }).events.map((e) => e.id);
    expect(streamed).toEqual(recorded);

    const text = textFollower.stdout();
    expect(text).toMatch(/^\d\d:\d\d:\d\d {2}update {3}web\/2 started: update/m);
    expect(text).toMatch(new RegExp(`Task ${followedTask} done in .*: 3 instance\\(s\\) updated`));
    expect(text).not.toContain('step:');
  });

  it('task N --follow --vm streams one instance\'s log; a failed task makes --follow exit 1 with the failure summary', async () => {
    ws.writeManifest(helloManifest({ instances: 3, greeting: 'Broken', props: { healthy: false }, canaryWatch: '100-1000' }));
    const deploy = startCli(['deploy', ws.manifest, '--yes', '--json'], { home: ws.home, cwd: ws.dir });
    const first = await deploy.waitForEvent((e) => e.stage === 'update' && e.state === 'started');
    failedTask = first.taskId as number;
    const vmFollower = startCli(['task', String(failedTask), '--follow', '--vm', 'web/0'], { home: ws.home, cwd: ws.dir });
    expect(await deploy.exited).toBe(1);
    expect(await vmFollower.exited).toBe(1);
    const logLines = vmFollower.stdout().trim().split('\n');
    expect(logLines.length).toBeGreaterThan(5);
    for (const l of logLines) expect(l).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z /);
    expect(vmFollower.stdout()).toContain('FAILED at health');
    expect(vmFollower.stderr()).toContain(`Task ${failedTask} error: web/0 failed at health`);

    const again = await ws.cli(['task', String(failedTask), '--follow']);
    expect(again.code).toBe(1);
    expect(again.stdout).toContain('update   web/0 FAILED: health:');
    expect(again.stderr).toContain('failed: web/0 at health (application)');
    expect(again.stderr).toContain('last output:');
    expect(again.stderr).toContain(`hint: director task ${failedTask} --vm web/0`);
  });

  it('tasks --state keeps only tasks in that state', async () => {
    const errors = JSON.parse((await ws.cli(['tasks', '--state', 'error', '--json'])).stdout) as TaskJson[];
    expect(errors.map((t) => t.id)).toEqual([failedTask]);
    const done = JSON.parse((await ws.cli(['tasks', '--state', 'done', '--json'])).stdout) as TaskJson[];
    expect(done.length).toBe(2);
    expect(done.every((t) => t.state === 'done')).toBe(true);
    const both = JSON.parse((await ws.cli(['tasks', '--state', 'error,done', '--json'])).stdout) as TaskJson[];
    expect(both.map((t) => t.id)).toEqual([failedTask, followedTask, followedTask - 1]);
    const text = await ws.cli(['tasks', '--state', 'error']);
    expect(text.stdout).toMatch(new RegExp(`^${failedTask} +error +deploy +hello `, 'm'));
    const bad = await ws.cli(['tasks', '--state', 'broken']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("unknown task state 'broken'");
    expect(bad.stderr).not.toMatch(/^\s+at /m);
  });

  it('events --since 1h: task starts and ends and stage-level events across tasks, oldest first', async () => {
    const r = await ws.cli(['events', '--since', '1h', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const ev = JSON.parse(r.stdout) as { ts: string; taskId: number; stage: string; state: string; message: string | null; deployment: string }[];
    expect(ev.map((e) => e.ts)).toEqual([...ev.map((e) => e.ts)].sort());
    expect(new Set(ev.map((e) => e.taskId))).toEqual(new Set([followedTask - 1, followedTask, failedTask]));
    for (const id of [followedTask - 1, followedTask, failedTask]) {
      const mine = ev.filter((e) => e.taskId === id);
      expect(mine[0]).toMatchObject({ stage: 'task', state: 'started' });
      expect(mine.at(-1)).toMatchObject({ stage: 'task', state: id === failedTask ? 'error' : 'done' });
    }
    expect(ev.some((e) => e.stage === 'canaries' && e.state === 'started')).toBe(true);
    expect(ev.some((e) => e.taskId === failedTask && e.stage === 'rollback' && e.state === 'finished')).toBe(true);
    // Task-level only: per-instance events stay in `director task N`.
    expect(ev.some((e) => e.stage === 'update')).toBe(false);

    const text = await ws.cli(['events', '--since', '1h']);
    expect(text.stdout.split('\n')[0]).toMatch(/^TIME +TASK +DEPLOYMENT +EVENT +MESSAGE$/);
    expect(text.stdout).toMatch(new RegExp(`^\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d +${failedTask} +hello +deploy FAILED +web/0 failed at health`, 'm'));
    const future = JSON.parse((await ws.cli(['events', '--since', new Date(Date.now() + 60_000).toISOString(), '--json'])).stdout) as unknown[];
    expect(future).toEqual([]);
    const bad = await ws.cli(['events', '--since', 'yesterday']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('hint: write e.g. --since 2h');
  });

  it('deployments and instances print their recorded state and live health as JSON', async () => {
    const deps = JSON.parse((await ws.cli(['deployments', '--json'])).stdout) as unknown[];
    expect(deps).toEqual([
      {
        name: 'hello', instances: 3, running: 3, failed: 0,
        lastTask: { id: failedTask, type: 'deploy', state: 'error', startedAt: expect.any(String), endedAt: expect.any(String) },
        updatedAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
      },
    ]);
    const insts = JSON.parse((await ws.cli(['instances', 'hello', '--json'])).stdout) as Record<string, unknown>[];
    expect(insts.map((i) => i.instance)).toEqual(['web/0', 'web/1', 'web/2']);
    for (const i of insts) {
      expect(i).toEqual({
        instance: expect.stringMatching(/^web\/\d$/), id: expect.any(String), state: 'running', az: expect.stringMatching(/^z[12]$/), cloud: 'local',
        cid: expect.stringMatching(/^local-/), ips: [expect.stringMatching(/^127\./)], version: expect.stringMatching(/^hello\/[0-9a-f]{12}$/), error: null, updatedAt: expect.any(String),
        health: 'healthy',
      });
    }
    const text = await ws.cli(['instances', 'hello']);
    expect(text.stdout.split('\n')[0]).toMatch(/^INSTANCE +STATE +HEALTH +AZ +CLOUD +VM CID +VERSION +UPDATED$/);
    const recorded = JSON.parse((await ws.cli(['instances', 'hello', '--no-health', '--json'])).stdout) as Record<string, unknown>[];
    expect(recorded[0]!.health).toBeUndefined();
    // Health is live: a job killed behind the director's back shows, with why; repair brings it back.
    expect((await ws.cli(['local-cloud', 'kill-job', 'web/1', 'web'])).code).toBe(0);
    const live = JSON.parse((await ws.cli(['instances', 'hello', '--json'])).stdout) as { instance: string; health: string; healthDetail?: string }[];
    expect(live.map((i) => i.health)).toEqual(['healthy', 'failing', 'healthy']);
    expect(live[1]!.healthDetail).toContain('job web is not running');
    expect((await ws.cli(['repair', 'hello', '--yes'])).code).toBe(0);
    const unknown = await ws.cli(['instances', 'nope']);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('hint: deployments: hello');
  });

  it('task N --timeline lists each instance with its steps; --out writes an HTML page with an SVG Gantt', async () => {
    const r = await ws.cli(['task', String(followedTask), '--timeline']);
    expect(r.code, r.stderr).toBe(0);
    for (const name of ['web/0', 'web/1', 'web/2']) {
      const line = r.stdout.split('\n').find((l) => l.trimStart().startsWith(`${name} `));
      expect(line, r.stdout).toBeDefined();
      expect(line).toMatch(/started \+\d+\.\d\ds · connect \+[\d.]+s · install \+[\d.]+s · drain \+[\d.]+s · stop \+[\d.]+s · apply \+[\d.]+s · start \+[\d.]+s · health \+[\d.]+s · finished \+[\d.]+s/);
    }
    const failed = await ws.cli(['task', String(failedTask), '--timeline']);
    expect(failed.stdout).toMatch(/web\/0 .*health \+[\d.]+s · FAILED \+[\d.]+s/);
    expect(failed.stdout).toMatch(/web\/0 rollback .*finished/);

    const out = join(ws.dir, 'timeline.html');
    const html = await ws.cli(['task', String(followedTask), '--timeline', '--out', out]);
    expect(html.code, html.stderr).toBe(0);
    expect(existsSync(out)).toBe(true);
    const page = readFileSync(out, 'utf8');
    expect(page).toMatch(/^<!doctype html>/);
    expect(page).toMatch(/<svg [^>]*>[\s\S]*<rect [\s\S]*<\/svg>/);
    for (const name of ['web/0', 'web/1', 'web/2']) expect(page).toContain(`>${name}</text>`);
    expect(page).not.toMatch(/<script|<link|src=/);
    const json = JSON.parse((await ws.cli(['task', String(followedTask), '--timeline', '--json'])).stdout) as { bars: { instance: string; outcome: string; steps: { name: string }[] }[] };
    expect(json.bars.map((b) => b.instance)).toEqual(['web/0', 'web/1', 'web/2']);
    expect(json.bars[1]!.steps.map((s) => s.name)).toEqual(['connect', 'install', 'drain', 'stop', 'apply', 'start', 'health']);
  });

  it('task N --events shows every event with its steps; --debug interleaves every VM\'s log, prefixed with the instance', async () => {
    const ev = await ws.cli(['task', String(followedTask), '--events']);
    expect(ev.stdout).toMatch(/update {3}web\/1 step: drain/);
    expect(ev.stdout).not.toContain('Task ');
    const dbg = await ws.cli(['task', String(followedTask), '--debug']);
    expect(dbg.code, dbg.stderr).toBe(0);
    const lines = dbg.stdout.trim().split('\n');
    for (const l of lines) expect(l).toMatch(/^web\/\d {2}\d{4}-\d\d-\d\dT[\d:.]+Z /);
    expect(new Set(lines.map((l) => l.split(' ')[0]))).toEqual(new Set(['web/0', 'web/1', 'web/2']));
    const conflict = await ws.cli(['task', String(followedTask), '--vm', 'web/0', '--events']);
    expect(conflict.code).toBe(1);
    expect(conflict.stderr).toContain('cannot be combined');
  });

  it('completion bash covers commands and options and completes in a real bash; completion zsh is a compdef script', async () => {
    const bash = await ws.cli(['completion', 'bash']);
    expect(bash.code).toBe(0);
    expect(bash.stdout).toContain('deploy');
    expect(bash.stdout).toContain('--dry-run');
    const script = join(ws.dir, 'completion.bash');
    writeFileSync(script, bash.stdout);
    const complete = (...words: string[]) =>
      execFileSync('bash', ['-c', `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _director_complete; printf '%s\\n' "\${COMPREPLY[@]}"`, 'x', script, ...words], { encoding: 'utf8' }).trim().split('\n');
    expect(complete('director', 'dep')).toEqual(['deploy', 'deployments']);
    expect(complete('director', 'deploy', '--dr')).toEqual(['--dry-run']);
    expect(complete('director', 'tasks', '--state', 'er')).toEqual(['error']);
    expect(complete('director', 'task', '3', '--fo')).toEqual(['--follow']);
    const sub = complete('director', 'local-cloud', 'st');
    expect(sub).toEqual(expect.arrayContaining(['status', 'stop']));
    expect(sub.every((w) => w.startsWith('st'))).toBe(true);
    const zsh = await ws.cli(['completion', 'zsh']);
    expect(zsh.stdout.split('\n')[0]).toBe('#compdef director');
    expect(zsh.stdout).toContain("'--dry-run:show the plan and change nothing");
    const unknown = await ws.cli(['completion', 'fish']);
    expect(unknown.code).toBe(1);
  });

  it('every command has --help with an Examples section', async () => {
    const commands = [[], ['deploy'], ['plan'], ['vms'], ['tasks'], ['task'], ['events'], ['deployments'], ['instances'], ['delete-deployment'], ['cancel'], ['locks'], ['local-cloud'], ['local-cloud', 'status'], ['local-cloud', 'stop'], ['completion']];
    const results = await Promise.all(commands.map((c) => ws.cli([...c, '--help'])));
    results.forEach((r, i) => {
      expect(r.code, commands[i]!.join(' ')).toBe(0);
      expect(r.stdout, commands[i]!.join(' ')).toMatch(/\nExamples:\n {2}(director |source <\(director )/);
    });
  });
});
