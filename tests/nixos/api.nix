# VM test of an api machine: echo and openai connectors (against the OpenAI stand-in) working a Redis queue
# on another node; a worker killed with SIGKILL is restarted and its job completes exactly once; stopping
# appliance.target drains the workers.
{ self, pkgs }:

let
  common = import ./common.nix { inherit pkgs; };
  appliance = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
  openaiKey = pkgs.writeText "openai-api-key" "sk-vm-test";
in
{
  name = "appliance-api";

  nodes = {
    redis = common.redisNode;

    api = {
      imports = [ self.nixosModules.default ];
      services.appliance = common.applianceBase // {
        machineType = "api";
        openFirewall = true;
        connectors = {
          echo.slots = 2;
          openai = {
            slots = 1;
            baseUrl = "http://127.0.0.1:8000/v1";
            apiKeyFile = "${openaiKey}";
          };
        };
        settings.connectors.openai.extra.default_model = "gpt-standin";
      };

      # The external API, replaced by a local server speaking its protocol.
      systemd.services.openai-standin = {
        wantedBy = [ "multi-user.target" ];
        before = [ "appliance.target" ];
        serviceConfig = {
          ExecStart = "${appliance.pythonEnv}/bin/python -m appliance.standins.openai --port 8000";
          DynamicUser = true;
        };
      };
    };
  };

  testScript = common.scriptPrelude + ''
    start_all()
    redis.wait_for_unit("redis-jobs.service")
    redis.wait_for_open_port(6379)
    api.wait_for_unit("appliance.target")
    for unit in ["appliance-machine", "appliance-worker@echo0", "appliance-worker@echo1", "appliance-worker@openai0"]:
        api.wait_for_unit(f"{unit}.service")
    api.wait_for_open_port(9090)

    with subtest("secrets reach the workers only as credentials"):
        api.fail("grep -r vm-test-redis-password /etc/appliance")
        api.fail("systemctl show -P Environment appliance-worker@openai0.service | grep -q sk-vm-test")
        cmdlines = api.succeed("cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' ' || true")
        assert "sk-vm-test" not in cmdlines and "vm-test-redis-password" not in cmdlines

    with subtest("echo and openai jobs complete"):
        echo_id = submit(api, "echo", {"message": "hello"})
        job = wait_job(api, echo_id)
        assert job["status"] == "completed", job
        openai_id = submit(api, "openai_text", {"prompt": "hello", "stream": False})
        job = wait_job(api, openai_id)
        assert job["status"] == "completed", job

    with subtest("a worker killed with SIGKILL is restarted and its job completes once"):
        job_id = submit(api, "echo", {"delay": 15})
        job = wait_status(api, job_id, ["claimed", "running"])
        unit = "appliance-worker@" + job["worker_id"].rsplit("-", 1)[1] + ".service"
        before = restarts(api, unit)
        kill9_main(api, unit)
        api.wait_until_succeeds(f"test $(systemctl show -P NRestarts {unit}) -gt {before}")
        api.wait_for_unit(unit)
        job = wait_job(api, job_id)
        assert job["status"] == "completed", job
        assert completions(api, job_id) == 1, "the job completed more than once"

    with subtest("stopping appliance.target drains the workers"):
        job_id = submit(api, "echo", {"delay": 5})
        wait_status(api, job_id, ["running"])
        api.succeed("systemctl stop appliance.target")
        job = json.loads(api.succeed(f"{CLI} job get {job_id} --json"))
        # Drained: finished within the drain grace, or handed back to the queue - never left leased.
        assert job["status"] in ("completed", "pending"), job
        for unit in ["appliance-worker@echo0", "appliance-worker@echo1", "appliance-machine"]:
            api.require_unit_state(f"{unit}.service", "inactive")
  '';
}
