# Group 5 of the images: the files that turn a Nix closure into a bootable container, and the image config.
#
# Two ways to run an image:
# - systemd as PID 1 (no arguments; `podman run --systemd=always IMAGE`): the entrypoint (./entrypoint.sh)
#   copies the container's APPLIANCE_*, LD_LIBRARY_PATH, NVIDIA_* and CUDA_* variables into
#   /etc/appliance/appliance.env (systemd does not hand PID 1's environment to services), links podman/docker secrets into /run/credstore (where the units'
#   LoadCredential=<id> looks), and execs systemd. At boot appliance-install.service computes the service
#   plan (`appliance machine plan --json`), installs the units with `appliance units install` and starts
#   appliance.target.
#   ("Units container mode": the machine failing for good exits PID 1 with status 70, and the container.)
# - single process (any arguments; for platforms that forbid systemd in containers): the entrypoint execs
#   `appliance "$@"`, e.g. `IMAGE machine` ("supervised container mode", machine.container_mode: the supervisor
#   starts, restarts and stops ComfyUI and the workers itself, and exits 70 when one fails for good) or
#   `IMAGE worker --slot echo0`, or the HTTP job API: `IMAGE api --host 0.0.0.0` (api image). Secrets come from /run/secrets (CREDENTIALS_DIRECTORY). The supervisor also
#   stops cleanly on the StopSignal below (SIGRTMIN+3); run it with the runtime's --init to reap orphans.
{
  lib,
  bashInteractive,
  systemd,
  writeText,
  appliance,
}:

let
  # Nix's systemd keeps its own units outside the FHS paths PID 1 searches by default; the trailing ':'
  # appends the built-in search path (/run/systemd/..., transient and generator units).
  unitPath = lib.concatStringsSep ":" [
    "/etc/systemd/system"
    "${systemd}/example/systemd/system"
    "${systemd}/lib/systemd/system"
    ""
  ];

  # images/entrypoint.sh, run by the image's own sh (bash's `sh`, POSIX mode) with systemd and the appliance as
  # its first two arguments; it needs only shell builtins and coreutils (tests/test_images.py checks that).
  entrypoint = [
    (lib.getExe' bashInteractive "sh")
    "${./entrypoint.sh}"
    "${systemd}/lib/systemd/systemd"
    "/bin/appliance"
  ];

  installUnit = writeText "appliance-install.service" ''
    [Unit]
    Description=Install the appliance service plan into this container
    After=local-fs.target
    Before=appliance.target

    [Service]
    EnvironmentFile=-/etc/appliance/appliance.env
    ExecStart=${lib.getExe' bashInteractive "bash"} -c '/bin/appliance machine plan --json > /run/appliance-plan.json'
    ExecStart=/bin/appliance units install --bin /bin/appliance --plan-json /run/appliance-plan.json --container-mode
    ExecStart=${systemd}/bin/systemctl daemon-reload
    ExecStart=${systemd}/bin/systemctl start --no-block appliance.target
    RemainAfterExit=yes
    Type=oneshot
  '';

  osRelease = writeText "os-release" ''
    NAME="appliance"
    ID=appliance
    PRETTY_NAME="appliance (Nix)"
    VERSION_ID="${appliance.version}"
  '';
in
{
  config =
    {
      machineType,
      env ? { },
    }:
    {
      Entrypoint = entrypoint;
      Cmd = [ ];
      # systemd in a container stops on SIGRTMIN+3; podman --systemd=always sets this itself.
      StopSignal = "SIGRTMIN+3";
      Env = lib.mapAttrsToList (name: value: "${name}=${value}") (
        {
          APPLIANCE_MACHINE__TYPE = machineType;
          PATH = "/bin";
          SSL_CERT_FILE = "/etc/ssl/certs/ca-bundle.crt";
          SYSTEMD_UNIT_PATH = unitPath;
        }
        // env
      );
      # 9090: the machine's health server; 8088 (api image): the HTTP job API, run as `IMAGE api --host 0.0.0.0`.
      ExposedPorts = {
        "9090/tcp" = { };
      }
      // lib.optionalAttrs (machineType == "api") { "8088/tcp" = { }; };
      Volumes = {
        "/var/lib/appliance" = { };
      };
      Labels = {
        "org.opencontainers.image.title" = "appliance-${machineType}";
        "org.opencontainers.image.version" = appliance.version;
      };
    };

  # Runs without root in the customisation layer's directory; fakeroot makes everything root-owned.
  extraCommands =
    { machineType, ... }:
    ''
      mkdir -p etc/appliance etc/credstore etc/systemd/system/multi-user.target.wants tmp var/lib/appliance run
      chmod 1777 tmp
      chmod 0700 etc/credstore
      # The units run as User=/Group=appliance (the package's sysusers.d entry, fixed here at uid 990).
      printf 'root:x:0:0:root:/root:/bin/bash\nappliance:x:990:990:Appliance services:/var/lib/appliance:/bin/false\nnobody:x:65534:65534:nobody:/var/empty:/bin/false\n' > etc/passwd
      printf 'root:x:0:\nappliance:x:990:\nnogroup:x:65534:\n' > etc/group
      printf 'passwd: files systemd\ngroup: files systemd\nhosts: files dns\n' > etc/nsswitch.conf
      cp ${osRelease} etc/os-release
      # Empty: systemd (or podman) fills in a machine id at boot.
      touch etc/machine-id
      cp ${installUnit} etc/systemd/system/appliance-install.service
      ln -s ../appliance-install.service etc/systemd/system/multi-user.target.wants/appliance-install.service
      ln -s ${systemd}/example/systemd/system/multi-user.target etc/systemd/system/default.target
      echo 'APPLIANCE_MACHINE__TYPE=${machineType}' > etc/appliance/appliance.env
    '';
}
