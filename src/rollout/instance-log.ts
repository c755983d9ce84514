/**
 * Collects one instance's remote output into its task log, a line at a time with timestamps,
 * redacting var values before anything is stored.
 */
import type { Tasks } from '../tasks/tasks.js';

export interface InstanceLog {
  (stream: 'stdout' | 'stderr' | 'director', text: string): void;
  flush(): void;
  /** the last lines written, for failure reports */
  tail(n: number): string[];
}

export function instanceLog(tasks: Tasks, taskId: number, instance: string, redact: (s: string) => string): InstanceLog {
  const partial: Record<string, string> = {};
  const recent: string[] = [];
  const write = (stream: string, lines: string[]) => {
    const clean = lines.map(redact);
    tasks.addLogLines(taskId, instance, stream, clean);
    recent.push(...clean);
    if (recent.length > 200) recent.splice(0, recent.length - 200);
  };
  const log = ((stream, text) => {
    const buffered = (partial[stream] ?? '') + text;
    const lines = buffered.split('\n');
    partial[stream] = lines.pop() ?? '';
    if (stream === 'director' && partial[stream]) lines.push(partial[stream]!), (partial[stream] = '');
    write(stream, lines);
  }) as InstanceLog;
  log.flush = () => {
    for (const [stream, rest] of Object.entries(partial)) if (rest) write(stream, [rest]);
    for (const k of Object.keys(partial)) delete partial[k];
  };
  log.tail = (n) => recent.slice(-n);
  return log;
}
