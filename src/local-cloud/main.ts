/**
 * Entry point of the local-cloud supervisor: `node dist/local-cloud/main.js <home>`. Started
 * detached by LocalCloudClient.ensure(); outlives the CLI that started it.
 */
import { EXIT_ALREADY_RUNNING } from './protocol.js';
import { LocalCloudSupervisor, SupervisorAlreadyRunningError } from './supervisor.js';

async function main(): Promise<void> {
  const home = process.argv[2];
  if (!home) {
    console.error('usage: node dist/local-cloud/main.js <director-home>');
    process.exit(2);
  }
  const supervisor = new LocalCloudSupervisor({ home });
  process.on('SIGTERM', () => void supervisor.stop());
  process.on('SIGINT', () => void supervisor.stop());
  // No terminal to lose: a hang-up from whatever shell started us must not take the VMs down.
  process.on('SIGHUP', () => {});
  try {
    await supervisor.start();
  } catch (err) {
    if (err instanceof SupervisorAlreadyRunningError) {
      console.error(err.message);
      process.exit(EXIT_ALREADY_RUNNING);
    }
    console.error('local-cloud supervisor failed to start:', err);
    process.exit(1);
  }
  await supervisor.stopped;
  process.exit(0);
}

void main();
