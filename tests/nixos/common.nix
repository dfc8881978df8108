# Shared parts of the VM tests: the Redis node, the secrets and the CLI/job helpers of the test scripts.
#
# The secrets are test values written into the Nix store on purpose; real deployments point passwordFile
# and apiKeyFile at files outside the store (sops-nix, agenix, systemd-creds).
{ pkgs }:

let
  redisPassword = pkgs.writeText "redis-password" "vm-test-redis-password";
in
{
  inherit redisPassword;

  redisNode = {
    services.redis.servers.jobs = {
      enable = true;
      bind = null;
      port = 6379;
      openFirewall = true;
      requirePassFile = "${redisPassword}";
    };
  };

  # Appliance settings every client node shares.
  applianceBase = {
    enable = true;
    redis = {
      url = "redis://redis:6379/0";
      passwordFile = "${redisPassword}";
    };
  };

  # Python helpers prepended to each testScript. `node` is the machine that runs the CLI.
  scriptPrelude = ''
    import json
    import re

    JQ = "${pkgs.jq}/bin/jq"
    CLI = "APPLIANCE_CONFIG=/etc/appliance/config.toml APPLIANCE_REDIS__PASSWORD_FILE=${redisPassword} appliance"
    REDIS_CLI = "${pkgs.redis}/bin/redis-cli -h redis -a vm-test-redis-password --no-auth-warning"


    def submit(node, service, payload, *extra):
        """Submit a job; the CLI prints the job id on its last line."""
        args = " ".join(extra)
        out = node.succeed(f"{CLI} job submit --service {service} --payload '{json.dumps(payload)}' {args}")
        return out.strip().splitlines()[-1]


    def wait_job(node, job_id, timeout_s=300):
        return json.loads(node.succeed(f"{CLI} job wait {job_id} --json --timeout {timeout_s}"))


    def wait_status(node, job_id, statuses):
        cond = " or ".join(f'.status == "{s}"' for s in statuses)
        node.wait_until_succeeds(f"{CLI} job get {job_id} --json | {JQ} -e '{cond}'", timeout=300)
        return json.loads(node.succeed(f"{CLI} job get {job_id} --json"))


    def completions(node, job_id):
        """How many complete_job events the queue's event stream holds for this job."""
        out = node.succeed(f"{REDIS_CLI} XRANGE 'appliance:{{default}}:events' - +")
        count, entry = 0, []
        for line in out.splitlines() + ["0-0"]:
            if re.fullmatch(r"\d+-\d+", line.strip()):
                if "complete_job" in entry and job_id in entry:
                    count += 1
                entry = []
            else:
                entry.append(line.strip())
        return count


    def restarts(node, unit):
        return int(node.succeed(f"systemctl show -P NRestarts {unit}").strip())


    def kill9_main(node, unit):
        pid = node.succeed(f"systemctl show -P MainPID {unit}").strip()
        assert pid != "0", f"{unit} has no main process"
        node.succeed(f"kill -9 {pid}")
  '';
}
