/**
 * The aws cloud's properties in the cloud-config, and the cloud_properties of its AZs and
 * vm_types. Credentials are never read from here: the SDK's standard chain finds them (env vars,
 * AWS_PROFILE, SSO, the instance role).
 */
import { userError } from '../../errors.js';
import { closest, didYouMean } from '../../manifest/suggest.js';

type Kind = 'string' | 'strings' | 'boolean' | 'port' | 'positive' | 'positive_int' | 'string_map' | 'other';

const EXPECTED: Record<Kind, string> = {
  string: 'a non-empty string',
  strings: 'a list of strings',
  boolean: 'true or false',
  port: 'a port number (1-65535)',
  positive: 'a positive number',
  positive_int: 'a positive whole number',
  string_map: 'a map of string keys to string values',
  other: '',
};

const CLOUD_KEYS: Record<string, Kind> = {
  region: 'string',
  /** VPC endpoints, and tests: http://127.0.0.1:PORT */
  endpoint: 'string',
  subnet_id: 'string',
  security_group_ids: 'strings',
  key_name: 'string',
  use_public_ip: 'boolean',
  ssh_user: 'string',
  /** test / VPC-endpoint affordance: SSH port when it is not 22 */
  ssh_port: 'port',
  /** how long a new instance may take to reach `running` (default 600) */
  running_timeout_s: 'positive',
  /** first delay between DescribeInstances polls while waiting for `running` (default 2) */
  poll_interval_s: 'positive',
  // read by the registry for every cloud, not by the adapter itself
  rate_limit: 'other',
  rate_limit_burst: 'other',
  base_dir: 'other',
};

const AZ_KEYS: Record<string, Kind> = {
  availability_zone: 'string',
  /** a subnet lives in one AZ, so an AZ may name its own (overrides the cloud's) */
  subnet_id: 'string',
};

const VM_TYPE_KEYS: Record<string, Kind> = {
  instance_type: 'string',
  image_id: 'string',
  root_disk_gb: 'positive_int',
  /** the AMI's root device (default /dev/sda1, Ubuntu's; Amazon Linux uses /dev/xvda) */
  root_device_name: 'string',
  iam_instance_profile: 'string',
  tags: 'string_map',
  ssh_user: 'string',
  security_group_ids: 'strings',
};

export const AWS_PROPERTIES: readonly string[] = Object.keys(CLOUD_KEYS);
export const AWS_AZ_PROPERTIES: readonly string[] = Object.keys(AZ_KEYS);
export const AWS_VM_TYPE_PROPERTIES: readonly string[] = Object.keys(VM_TYPE_KEYS);

export interface AwsCloudConfig {
  region: string;
  endpoint?: string;
  subnetId?: string;
  securityGroupIds: string[];
  keyName?: string;
  usePublicIp: boolean;
  sshUser: string;
  sshPort?: number;
  runningTimeoutS: number;
  pollIntervalS: number;
}

export interface AwsAzConfig {
  availabilityZone: string;
  subnetId?: string;
}

export interface AwsVmTypeConfig {
  instanceType: string;
  imageId: string;
  rootDiskGb?: number;
  rootDeviceName: string;
  iamInstanceProfile?: string;
  tags: Record<string, string>;
  sshUser?: string;
  securityGroupIds?: string[];
}

function ok(kind: Kind, v: unknown): boolean {
  switch (kind) {
    case 'string':
      return typeof v === 'string' && v !== '';
    case 'strings':
      return Array.isArray(v) && v.every((s) => typeof s === 'string' && s !== '');
    case 'boolean':
      return typeof v === 'boolean';
    case 'port':
      return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 65535;
    case 'positive':
      return typeof v === 'number' && Number.isFinite(v) && v > 0;
    case 'positive_int':
      return typeof v === 'number' && Number.isInteger(v) && v > 0;
    case 'string_map':
      return typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string');
    case 'other':
      return true;
  }
}

/**
 * @param where e.g. "cloud 'aws-east' (type aws)"
 * @param lenient unknown keys far from every known one are ignored (vm_types are shared by the
 *   clouds of a cloud-config, so they may carry another cloud's keys such as machine_type); a
 *   near miss (instnace_type) is still an error.
 */
function check(where: string, props: Record<string, unknown>, keys: Record<string, Kind>, lenient: boolean): void {
  const names = Object.keys(keys);
  for (const [key, value] of Object.entries(props)) {
    const kind = keys[key];
    if (kind === undefined) {
      if (lenient && closest(key, names) === undefined) continue;
      throw userError('cloud_property_unknown', `${where}: unknown property '${key}'${didYouMean(key, names)}`, {
        hint: `valid properties: ${names.join(', ')}`,
      });
    }
    if (!ok(kind, value)) {
      throw userError('cloud_property_invalid', `${where}: ${key} must be ${EXPECTED[kind]}, got ${JSON.stringify(value)}`, {
        hint: `valid properties: ${names.join(', ')}`,
      });
    }
  }
}

export function parseAwsProperties(cloud: string, properties: Record<string, unknown>): AwsCloudConfig {
  const where = `cloud '${cloud}' (type aws)`;
  check(where, properties, CLOUD_KEYS, false);
  const p = properties as Record<string, never>;
  const region = (p.region as string | undefined) ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION;
  if (!region) {
    throw userError('cloud_property_missing', `${where}: region is required`, { hint: 'add e.g. `region: us-east-1` to the cloud, or set AWS_REGION' });
  }
  if (p.endpoint !== undefined && !/^https?:\/\/[^/\s]+/.test(p.endpoint as string)) {
    throw userError('cloud_property_invalid', `${where}: endpoint must be a URL like https://ec2.us-east-1.amazonaws.com, got ${JSON.stringify(p.endpoint)}`);
  }
  return {
    region,
    endpoint: p.endpoint as string | undefined,
    subnetId: p.subnet_id as string | undefined,
    securityGroupIds: (p.security_group_ids as string[] | undefined) ?? [],
    keyName: p.key_name as string | undefined,
    usePublicIp: (p.use_public_ip as boolean | undefined) ?? false,
    sshUser: (p.ssh_user as string | undefined) ?? 'ubuntu',
    sshPort: p.ssh_port as number | undefined,
    runningTimeoutS: (p.running_timeout_s as number | undefined) ?? 600,
    pollIntervalS: (p.poll_interval_s as number | undefined) ?? 2,
  };
}

export function parseAwsAz(cloud: string, az: string, props: Record<string, unknown>): AwsAzConfig {
  check(`az '${az}' of cloud '${cloud}' (type aws): cloud_properties`, props, AZ_KEYS, false);
  return {
    availabilityZone: (props.availability_zone as string | undefined) ?? az,
    subnetId: props.subnet_id as string | undefined,
  };
}

export function parseAwsVmType(cloud: string, vmType: string, props: Record<string, unknown>): AwsVmTypeConfig {
  const where = `vm_type '${vmType}' on cloud '${cloud}' (type aws): cloud_properties`;
  check(where, props, VM_TYPE_KEYS, true);
  for (const key of ['instance_type', 'image_id'] as const) {
    if (props[key] === undefined) {
      throw userError('cloud_property_missing', `${where}: ${key} is required`, {
        hint: key === 'image_id' ? 'an AMI id with SSH and cloud-init, e.g. an Ubuntu LTS AMI of your region: ami-0123456789abcdef0' : 'an EC2 instance type, e.g. t3.small',
      });
    }
  }
  return {
    instanceType: props.instance_type as string,
    imageId: props.image_id as string,
    rootDiskGb: props.root_disk_gb as number | undefined,
    rootDeviceName: (props.root_device_name as string | undefined) ?? '/dev/sda1',
    iamInstanceProfile: props.iam_instance_profile as string | undefined,
    tags: (props.tags as Record<string, string> | undefined) ?? {},
    sshUser: props.ssh_user as string | undefined,
    securityGroupIds: props.security_group_ids as string[] | undefined,
  };
}
