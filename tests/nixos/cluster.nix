# VM test of a pool: a Redis node, a gpu machine without a GPU (the ComfyUI stand-in on the CPU, started by the
# real `appliance comfyui` wrapper) and an api machine (echo, and openai against the OpenAI stand-in).
#
# - jobs of both kinds complete, submitted from the api machine;
# - ComfyUI writes only into its own StateDirectory;
# - each worker holds only its own connector's key;
# - a worker killed with SIGKILL is restarted and its job completes exactly once;
# - a hung ComfyUI is killed by systemd's watchdog: the proof is systemd's own verdict ($SERVICE_RESULT=watchdog,
#   counted by the unit's ExecStopPost= `machine record-stop`) and NRestarts, not a log line. Under WatchdogSec=
#   the wrapper only stops pinging (appliance.machine.comfyui), so the watchdog is the one mechanism that acts;
# - stopping appliance.target: the script waits until every member is inactive (systemctl stop returns before
#   PartOf= members have stopped), then checks that jobs went back or finished.
{ self, pkgs }:

let
  common = import ./common.nix { inherit pkgs; };
  appliance = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
  openaiKey = pkgs.writeText "openai-api-key" "sk-vm-test";

  workflow = steps: {
    "1" = {
      class_type = "EmptyImage";
      inputs = {
        width = 64;
        height = 64;
        batch_size = 1;
        color = 0;
      };
    };
    "2" = {
      class_type = "StandinSampler";
      inputs = {
        image = [
          "1"
          0
        ];
        inherit steps;
      };
    };
    "3" = {
      class_type = "SaveImage";
      inputs = {
        images = [
          "2"
          0
        ];
        filename_prefix = "vm";
      };
    };
  };
in
{
  name = "appliance-cluster";

  nodes = {
    redis = common.redisNode;

    gpu = {
      imports = [ self.nixosModules.default ];
      virtualisation.memorySize = 2048;
      services.appliance = common.applianceBase // {
        machineType = "gpu";
        comfyui = {
          acceleration = "cpu";
          command = [
            "${appliance.pythonEnv}/bin/python"
            "-m"
            "appliance.standins.comfyui"
            "--step-delay"
            "0.5"
          ];
        };
      };
      # A shorter watchdog than the packaged 90 s, set the way an operator would: the module's drop-ins
      # leave it alone, so this value wins.
      systemd.services."appliance-comfyui@0".serviceConfig.WatchdogSec = "15s";
    };

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
    SHORT = json.loads('${builtins.toJSON (workflow 4)}')
    LONG = json.loads('${builtins.toJSON (workflow 30)}')
    COMFY = "appliance-comfyui@0.service"
    GPU_WORKER = "appliance-worker@gpu0.service"
    API_UNITS = ["appliance-machine.service", "appliance-worker@echo0.service", "appliance-worker@echo1.service", "appliance-worker@openai0.service"]
    GPU_UNITS = ["appliance-machine.service", COMFY, GPU_WORKER]


    def active_state(node, unit):
        return node.succeed(f"systemctl show -P ActiveState {unit}").strip()


    def stop_target_and_wait(node, units):
        """`systemctl stop appliance.target` returns before its PartOf= members are down: wait for each."""
        node.succeed("systemctl stop appliance.target")
        for unit in units:
            node.wait_until_succeeds(f"test \"$(systemctl show -P ActiveState {unit})\" = inactive", timeout=300)


    def watchdog_kills(node, unit):
        """systemd's verdicts for the unit, as its ExecStopPost= recorded $SERVICE_RESULT."""
        path = f"/var/lib/appliance/unit-stops/{unit}.json"
        status, out = node.execute(f"cat {path}")
        return json.loads(out).get("watchdog", 0) if status == 0 else 0


    start_all()
    redis.wait_for_unit("redis-jobs.service")
    redis.wait_for_open_port(6379)
    for unit in GPU_UNITS:
        gpu.wait_for_unit(unit)
    for unit in API_UNITS:
        api.wait_for_unit(unit)
    gpu.wait_for_open_port(8188)
    api.wait_for_open_port(9090)

    with subtest("the supervisor expects exactly the units the module started"):
        gpu.wait_until_succeeds(f"{CLI} machine status --json | {JQ} -e '.status.machine.phase == \"ready\"'", timeout=300)
        planned = json.loads(gpu.succeed(f"{CLI} machine status --json"))["structure"]["services"]
        assert sorted(s["unit"] for s in planned) == [COMFY, GPU_WORKER], planned

    with subtest("secrets reach the workers only as credentials, each worker only its own"):
        api.fail("grep -r vm-test-redis-password /etc/appliance")
        api.fail("systemctl show -P Environment appliance-worker@openai0.service | grep -q sk-vm-test")
        api.succeed("systemctl show -P LoadCredential appliance-worker@openai0.service | grep -q openai-api-key")
        api.fail("systemctl show -P LoadCredential appliance-worker@echo0.service | grep -q openai-api-key")
        api.fail("systemctl show -P LoadCredential appliance-machine.service | grep -q openai-api-key")
        cmdlines = api.succeed("cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' ' || true")
        assert "sk-vm-test" not in cmdlines and "vm-test-redis-password" not in cmdlines

    with subtest("jobs of both kinds complete, submitted from the api machine"):
        job = wait_job(api, submit(api, "echo", {"message": "hello"}))
        assert job["status"] == "completed", job
        job = wait_job(api, submit(api, "openai_text", {"prompt": "hello", "stream": False}))
        assert job["status"] == "completed", job
        job = wait_job(api, submit(api, "comfyui", {"workflow": SHORT}))
        assert job["status"] == "completed", job

    with subtest("ComfyUI writes into its own StateDirectory only"):
        gpu.succeed("ls /var/lib/appliance/comfyui-0/output | grep -q '^vm'")
        gpu.succeed("test -d /var/lib/appliance/comfyui-0/user && test -d /var/lib/appliance/comfyui-0/temp")

    with subtest("an api worker killed with SIGKILL is restarted and its job completes once"):
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

    with subtest("a gpu worker killed with SIGKILL is restarted and its job completes once"):
        job_id = submit(api, "comfyui", {"workflow": LONG})
        wait_status(api, job_id, ["running"])
        before = restarts(gpu, GPU_WORKER)
        kill9_main(gpu, GPU_WORKER)
        gpu.wait_until_succeeds(f"test $(systemctl show -P NRestarts {GPU_WORKER}) -gt {before}")
        job = wait_job(api, job_id)
        assert job["status"] == "completed", job
        assert completions(api, job_id) == 1, "the job completed more than once"

    with subtest("a hung ComfyUI is killed by systemd's watchdog and restarted"):
        before_restarts, before_kills = restarts(gpu, COMFY), watchdog_kills(gpu, COMFY)
        main = gpu.succeed(f"systemctl show -P MainPID {COMFY}").strip()
        # Freeze ComfyUI itself (the wrapper's child): it stops answering, as a hung ComfyUI does.
        child = gpu.succeed(f"cat /proc/{main}/task/{main}/children").split()[0]
        gpu.succeed(f"kill -STOP {child}")
        gpu.wait_until_succeeds(f"test $(systemctl show -P NRestarts {COMFY}) -gt {before_restarts}", timeout=300)
        assert watchdog_kills(gpu, COMFY) == before_kills + 1, "the stop was not systemd's watchdog"
        gpu.wait_for_unit(COMFY)
        gpu.wait_for_unit(GPU_WORKER)
        job = wait_job(api, submit(api, "comfyui", {"workflow": SHORT}))
        assert job["status"] == "completed", job

    with subtest("stopping appliance.target drains the workers and hands jobs back"):
        api_job = submit(api, "echo", {"delay": 120})
        wait_status(api, api_job, ["running"])
        gpu_job = submit(api, "comfyui", {"workflow": LONG})
        wait_status(api, gpu_job, ["running"])
        stop_target_and_wait(api, API_UNITS)
        stop_target_and_wait(gpu, GPU_UNITS)
        for job_id in (api_job, gpu_job):
            job = json.loads(api.succeed(f"{CLI} job get {job_id} --json"))
            # Drained: finished within the drain grace, or handed back to the queue; never left leased.
            assert job["status"] in ("completed", "pending"), job
  '';
}
