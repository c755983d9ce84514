/** EC2 errors as DirectorErrors: throttling retried by the wrapper, capacity, credentials, bad input. */
import { DirectorError, infraError, isDirectorError, userError } from '../../errors.js';
import { throttledError } from '../throttle.js';

const THROTTLING = new Set(['RequestLimitExceeded', 'Throttling', 'ThrottlingException', 'TooManyRequestsException', 'RequestThrottled', 'ServiceUnavailable', 'Unavailable']);
const CAPACITY = new Set(['InsufficientInstanceCapacity', 'InstanceLimitExceeded', 'VcpuLimitExceeded', 'InsufficientAddressCapacity', 'InsufficientCapacity', 'MaxSpotInstanceCountExceeded']);
const AUTH = new Set([
  'AuthFailure',
  'UnauthorizedOperation',
  'InvalidClientTokenId',
  'SignatureDoesNotMatch',
  'OptInRequired',
  'Blocked',
  'ExpiredToken',
  'RequestExpired',
  'CredentialsProviderError',
]);
const BAD_INPUT = /^(Invalid|MissingParameter|UnknownParameter|Unsupported)/;
const NETWORK = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE', 'TimeoutError']);

export const CREDENTIALS_HINT =
  'the SDK reads credentials from its standard chain, never from the manifest: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary ones), ' +
  'or AWS_PROFILE naming a profile in ~/.aws/credentials or ~/.aws/config (run `aws sso login` for SSO profiles), or run the director on an instance whose IAM role allows ' +
  'ec2:RunInstances, ec2:DescribeInstances, ec2:TerminateInstances, ec2:CreateTags (and iam:PassRole for iam_instance_profile); check the clock too (SignatureDoesNotMatch/RequestExpired)';

interface SdkError {
  name?: string;
  Code?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number; requestId?: string };
}

export function awsErrorCode(err: unknown): string {
  const e = (err ?? {}) as SdkError;
  return e.Code ?? e.name ?? e.code ?? 'Error';
}

/** Translates what the SDK threw while doing `what` on cloud `cloud`. DirectorErrors pass through. */
export function mapAwsError(cloud: string, what: string, err: unknown): DirectorError {
  if (isDirectorError(err)) return err;
  const e = (err ?? {}) as SdkError;
  const code = awsErrorCode(err);
  const status = e.$metadata?.httpStatusCode;
  const msg = `cloud '${cloud}': ${what} failed: ${code}${e.message && e.message !== code ? `: ${e.message}` : ''}`;
  if (THROTTLING.has(code) || status === 503 || status === 429) {
    return throttledError(`cloud '${cloud}': ${what} was throttled by EC2 (${code}${status ? `, HTTP ${status}` : ''})`);
  }
  if (CAPACITY.has(code)) {
    return infraError('aws_capacity', msg, {
      hint:
        code === 'InsufficientInstanceCapacity' || code === 'InsufficientCapacity'
          ? 'EC2 has no capacity for this instance type in this availability zone right now: retry later, or use another instance_type or availability zone'
          : 'the account hit an EC2 quota: request a limit increase (Service Quotas console, "Running On-Demand instances"), terminate unused instances, or use a smaller instance_type',
      cause: err,
    });
  }
  if (AUTH.has(code) || e.name === 'CredentialsProviderError') {
    return userError('aws_credentials', msg, { hint: CREDENTIALS_HINT, cause: err });
  }
  if (BAD_INPUT.test(code)) {
    return userError('aws_invalid_request', msg, {
      hint: `EC2 rejected a value from the cloud-config: check cloud '${cloud}' (region, subnet_id, security_group_ids, key_name) and the vm_type's cloud_properties (image_id, instance_type, iam_instance_profile)`,
      cause: err,
    });
  }
  if (NETWORK.has(code) || NETWORK.has(e.code ?? '')) {
    return infraError('aws_unreachable', msg, { hint: `check cloud '${cloud}''s region and endpoint, and the network path to the EC2 API`, cause: err });
  }
  return infraError('aws_api_error', msg, { hint: e.$metadata?.requestId ? `EC2 request id ${e.$metadata.requestId}` : undefined, cause: err });
}
