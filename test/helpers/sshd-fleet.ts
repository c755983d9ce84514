/**
 * Fleets of real OpenSSH daemons ("machines" of a static cloud) on distinct loopback addresses.
 * The launcher lives in src/bench/static.ts so the benchmark (which ships in dist/) and the tests
 * start hosts the same way; this file is the tests' entry point to it.
 */
export { fleetAddress, sshdUnavailableReason, startFleetHost, startSshdFleet, staticHostsYaml, stopFleet, type FleetHost } from '../../src/bench/static.js';
