/** Option parsing shared by the commands that read manifests. */
import { userError } from '../errors.js';

/** commander accumulator for repeatable options (`-v a=1 -v b=2`). */
export const collect = (value: string, previous: string[] = []) => [...previous, value];

/** `--var NAME=VALUE` pairs; a value may itself contain `=`. */
export function parseVars(list: string[] = []): Record<string, string> {
  const vars: Record<string, string> = {};
  for (const item of list) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw userError('var_malformed', `--var '${item.split('=')[0]}' has no value`, { hint: 'write --var NAME=VALUE' });
    vars[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return vars;
}
