# VM test of a gpu machine without a GPU: one ComfyUI instance run by the ComfyUI stand-in on the CPU, its
# worker, a Redis queue on another node. A ComfyUI that stops answering is killed by its watchdog and
# restarted; a worker killed with SIGKILL is restarted and its job completes exactly once.
{ self, pkgs }:

let
  common = import ./common.nix { inherit pkgs; };
  appliance = self.packages.${pkgs.stdenv.hostPlatform.system}.default;

  workflow = {
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
        steps = 4;
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
  name = "appliance-gpu";

  nodes = {
    redis = common.redisNode;

    gpu = {
      imports = [ self.nixosModules.default ];
      virtualisation.memorySize = 2048;
      environment.systemPackages = [ pkgs.curl ];
      services.appliance = common.applianceBase // {
        machineType = "gpu";
        comfyui = {
          cpu = true;
          command = [
            "${appliance.pythonEnv}/bin/python"
            "-m"
            "appliance.standins.comfyui"
            "--step-delay"
            "0.5"
          ];
        };
        settings.machine.gpu_cpu_mode = true;
      };
    };
  };

  testScript = common.scriptPrelude + ''
    WORKFLOW = json.loads('${builtins.toJSON workflow}')
    COMFY = "appliance-comfyui@0.service"
    WORKER = "appliance-worker@gpu0.service"

    start_all()
    redis.wait_for_unit("redis-jobs.service")
    gpu.wait_for_unit("appliance.target")
    gpu.wait_for_unit(COMFY)
    gpu.wait_for_unit(WORKER)
    gpu.wait_for_open_port(8188)

    with subtest("a ComfyUI job completes"):
        job = wait_job(gpu, submit(gpu, "comfyui", {"workflow": WORKFLOW}))
        assert job["status"] == "completed", job

    with subtest("a worker killed with SIGKILL is restarted and its job completes once"):
        job_id = submit(gpu, "comfyui", {"workflow": dict(WORKFLOW, **{"2": {"class_type": "StandinSampler", "inputs": {"image": ["1", 0], "steps": 30}}})})
        wait_status(gpu, job_id, ["running"])
        before = restarts(gpu, WORKER)
        kill9_main(gpu, WORKER)
        gpu.wait_until_succeeds(f"test $(systemctl show -P NRestarts {WORKER}) -gt {before}")
        job = wait_job(gpu, job_id)
        assert job["status"] == "completed", job
        assert completions(gpu, job_id) == 1, "the job completed more than once"

    with subtest("a hung ComfyUI is restarted by its watchdog"):
        before = restarts(gpu, COMFY)
        gpu.succeed("curl -sf -X POST -H 'Content-Type: application/json' -d '{\"paused\": true}' http://127.0.0.1:8188/__standin/pause")
        # WatchdogSec=90s in the unit; the default wait_until_succeeds timeout (900 s) covers it.
        gpu.wait_until_succeeds(f"test $(systemctl show -P NRestarts {COMFY}) -gt {before}")
        gpu.succeed(f"journalctl -u {COMFY} | grep -i watchdog")
        gpu.wait_for_unit(COMFY)
        gpu.wait_for_unit(WORKER)
        job = wait_job(gpu, submit(gpu, "comfyui", {"workflow": WORKFLOW}))
        assert job["status"] == "completed", job

    with subtest("stopping appliance.target stops every instance"):
        gpu.succeed("systemctl stop appliance.target")
        for unit in [COMFY, WORKER, "appliance-machine.service"]:
            gpu.require_unit_state(unit, "inactive")
  '';
}
