# services.appliance: a GPU or API machine of the appliance job pool.
#
# The unit files come from the package (`systemd.packages`): this module does not re-declare them, it only
# adds drop-ins. It links the instances of the machine's service plan into appliance.target (what
# `appliance units install` does on other hosts), hands secrets over with LoadCredential=, and renders
# `settings` to the TOML file every process reads through APPLIANCE_CONFIG.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    literalExpression
    mkDefault
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    types
    ;

  cfg = config.services.appliance;

  tomlFormat = pkgs.formats.toml { };

  # Mirrors appliance.config.KNOWN_CONNECTORS; a misspelt connector fails at evaluation, not at boot.
  knownConnectors = [
    "openai"
    "replicate"
    "runpod"
    "echo"
  ];

  # Credential ids the processes look for under $CREDENTIALS_DIRECTORY (appliance.secrets.CREDENTIALS).
  redisCredential = "redis-password";
  connectorCredential = name: "${name}-api-key";

  unitName = name: "appliance-${name}";

  gpuIndices = if builtins.isInt cfg.gpus then lib.range 0 (cfg.gpus - 1) else cfg.gpus;

  # A machine without GPUs can still be a gpu machine for development: one ComfyUI on the CPU.
  cpuOnly = cfg.comfyui.cpu || (cfg.settings.machine.gpu_cpu_mode or false);
  comfyIndices = if gpuIndices == [ ] && cpuOnly then [ 0 ] else gpuIndices;

  enabledConnectors = lib.filterAttrs (_: c: c.enable && c.slots > 0) cfg.connectors;

  # The service plan, as unit instance names (appliance.machine.plan computes the same at run time).
  comfyInstances = lib.optionals (cfg.machineType == "gpu") (map (i: "comfyui@${toString i}") comfyIndices);
  workerSlots =
    if cfg.machineType == "gpu" then
      map (i: "gpu${toString i}") comfyIndices
    else
      lib.concatLists (
        lib.mapAttrsToList (name: c: map (j: "${name}${toString j}") (lib.range 0 (c.slots - 1))) enabledConnectors
      );

  # LoadCredential= entries (id:path) for each secret given as a file. The packaged units load their
  # credentials from /etc/credstore by id; the empty first entry resets that list, so only the files
  # configured here are loaded and a missing credstore entry cannot fail a unit.
  sharedCredentials =
    lib.optional (cfg.redis.passwordFile != null) "${redisCredential}:${cfg.redis.passwordFile}"
    ++ lib.mapAttrsToList (id: path: "${id}:${path}") cfg.extraCredentials;
  connectorCredentials = lib.mapAttrsToList (name: c: "${connectorCredential name}:${c.apiKeyFile}") (
    lib.filterAttrs (_: c: c.apiKeyFile != null) enabledConnectors
  );
  # Supervisor and failure handler talk to Redis only; workers also call the APIs.
  supervisorCredentials = [ "" ] ++ sharedCredentials;
  workerCredentials = [ "" ] ++ sharedCredentials ++ connectorCredentials;

  configFile = tomlFormat.generate "appliance.toml" cfg.settings;

  # A password inside a redis:// URL, as redis-py accepts it (redis://[user]:password@host).
  urlHasPassword = url: builtins.match "[a-z]+://[^/@]*:[^/@]+@.*" url != null;

  # Drop-in on a packaged unit or template instance. "asDropin": instance names have no unit file of their
  # own, so the default strategy would write a full unit without ExecStart.
  dropIn =
    extra:
    {
      overrideStrategy = "asDropin";
      restartTriggers = [ configFile ];
    }
    // extra;

  instanceUnit = extra: dropIn ({ wantedBy = [ "appliance.target" ]; } // extra);

  drainGrace = cfg.settings.worker.drain_grace_s or 30;

  connectorModule =
    { name, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
          description = "Whether to run workers for the `${name}` connector on this (api) machine.";
        };
        slots = mkOption {
          type = types.ints.unsigned;
          default = 1;
          example = 4;
          description = ''
            Worker processes for this connector, each its own unit `appliance-worker@${name}<N>.service`.
          '';
        };
        concurrency = mkOption {
          type = types.ints.positive;
          default = 1;
          description = "Jobs one worker process of this connector runs at once.";
        };
        baseUrl = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "http://127.0.0.1:8000/v1";
          description = "API base URL; null uses the provider's public endpoint.";
        };
        apiKeyFile = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "/run/secrets/${name}-api-key";
          description = ''
            File holding the API key, read by systemd as root and handed to the workers as the credential
            `${connectorCredential name}` (LoadCredential=), so it never enters the Nix store, the unit's
            environment or a process's arguments. An inline `settings.connectors.${name}.api_key` would be
            stored world-readable in the Nix store; setting both is an error.
          '';
        };
      };
    };
in
{
  ###### interface

  options.services.appliance = {
    enable = mkEnableOption "the appliance machine (appliance.target and the units of its service plan)";

    package = mkOption {
      type = types.package;
      default = pkgs.appliance;
      defaultText = literalExpression "appliance.packages.\${system}.default";
      description = "The appliance package; its unit files and tmpfiles.d entry are installed from it.";
    };

    machineType = mkOption {
      type = types.enum [
        "gpu"
        "api"
      ];
      default = "api";
      description = ''
        `gpu`: one ComfyUI (`appliance-comfyui@<index>`) and one worker (`appliance-worker@gpu<index>`) per
        GPU. `api`: `slots` workers per enabled connector (`appliance-worker@openai0`, ...).
      '';
    };

    gpus = mkOption {
      type = types.either types.ints.unsigned (types.listOf types.ints.unsigned);
      default = [ ];
      example = literalExpression "[ 0 1 ]";
      description = ''
        GPUs of a gpu machine: a list of indices, or a count N meaning indices 0 .. N-1. Each index gets its
        own ComfyUI on port `comfyui.basePort + index`.
      '';
    };

    comfyui = {
      package = mkOption {
        type = types.nullOr types.package;
        default = null;
        defaultText = literalExpression "null";
        example = literalExpression "pkgs.comfyui";
        description = ''
          ComfyUI package whose main program starts ComfyUI. For CUDA, take it from a nixpkgs instance with
          `config.cudaSupport = true; config.allowUnfree = true;`. Ignored when `command` is set.
        '';
      };
      command = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = if cfg.comfyui.package != null then [ (lib.getExe cfg.comfyui.package) ] else null;
        defaultText = literalExpression ''if comfyui.package != null then [ (lib.getExe comfyui.package) ] else null'';
        example = literalExpression ''[ "''${appliance.pythonEnv}/bin/python" "-m" "appliance.standins.comfyui" ]'';
        description = "Command that starts one ComfyUI; the port and listen address are appended by `appliance comfyui`.";
      };
      basePort = mkOption {
        type = types.port;
        default = 8188;
        description = "Port of the ComfyUI for GPU 0; GPU N listens on basePort + N.";
      };
      listen = mkOption {
        type = types.str;
        default = "127.0.0.1";
        description = "Address ComfyUI listens on. Only the local worker talks to it.";
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "--disable-all-custom-nodes" ];
        description = "Extra ComfyUI command-line arguments.";
      };
      modelsDir = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/models";
        description = ''
          Model directory handed to ComfyUI. The units run with ProtectSystem=strict and ProtectHome=yes: it
          is readable anywhere outside /home.
        '';
      };
      cpu = mkOption {
        type = types.bool;
        default = false;
        description = "Run ComfyUI with --cpu; with no `gpus`, one CPU-run instance (development, VM tests).";
      };
    };

    connectors = mkOption {
      type = types.attrsOf (types.submodule connectorModule);
      default = { };
      example = literalExpression ''
        {
          openai = { slots = 2; concurrency = 4; apiKeyFile = "/run/secrets/openai-api-key"; };
          echo.slots = 1;
        }
      '';
      description = "API connectors of an api machine, by name (${lib.concatStringsSep ", " knownConnectors}).";
    };

    redis = {
      url = mkOption {
        type = types.str;
        default = "redis://127.0.0.1:6379/0";
        example = "rediss://redis.internal:6380/0";
        description = ''
          Redis URL without the password (redis://, rediss:// or unix://). A password written into the URL is
          stored world-readable in the Nix store: use `passwordFile`.
        '';
      };
      passwordFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/redis-password";
        description = ''
          File holding the Redis password, handed to the processes as the credential `${redisCredential}`.
          Setting it together with an inline password (`settings.redis.password` or one inside `url`) is an error.
        '';
      };
      tls = {
        enable = mkEnableOption "TLS to Redis (the URL must then be rediss://)";
        caFile = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "/etc/ssl/redis-ca.pem";
          description = "CA bundle that verifies the Redis server; null uses the system trust store.";
        };
      };
    };

    healthPort = mkOption {
      type = types.port;
      default = 9090;
      description = "Port of the health server (/health /ready /status /metrics).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `healthPort` in the firewall (for Prometheus and load balancers).";
    };

    containerMode = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Supervised container mode (`machine.container_mode`): appliance-machine.service starts ComfyUI and the
        workers itself as its children, restarts them and stops them, instead of one unit per instance (for
        NixOS containers whose systemd cannot delegate per-unit device access). Only appliance-machine.service
        is started; it gets every credential. A service that fails past its restart limit makes the supervisor
        exit with status 70 (`machine.exit_on_service_failure`), and systemd restarts it. Not the units'
        `--container-mode` (FailureAction=exit), which images with systemd as PID 1 use.
      '';
    };

    extraCredentials = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = literalExpression ''{ s3-secret-access-key = "/run/secrets/s3"; monitor-token = "/run/secrets/monitor"; }'';
      description = ''
        More credentials by id (see appliance.secrets.CREDENTIALS), each loaded from a file with
        LoadCredential= into the supervisor, the failure handler and every worker.
      '';
    };

    settings = mkOption {
      type = types.submodule { freeformType = tomlFormat.type; };
      default = { };
      example = literalExpression ''
        {
          machine.pool = "fast";
          worker.drain_grace_s = 60;
          storage = { backend = "s3"; s3.bucket = "outputs"; };
        }
      '';
      description = ''
        Settings of every appliance process (see docs/configuration.md), rendered to TOML and passed as
        APPLIANCE_CONFIG. The typed options above are written into it; setting the same key both ways is
        a conflict. Never put secrets here: the file is world-readable in the Nix store.
      '';
    };
  };

  ###### implementation

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = cfg.machineType != "gpu" || comfyIndices != [ ];
          message = "services.appliance: machineType is \"gpu\" but gpus is empty; set gpus (a count or a list of indices) or comfyui.cpu for a CPU-run ComfyUI.";
        }
        {
          assertion = cfg.machineType != "gpu" || cfg.comfyui.command != null;
          message = "services.appliance: machineType is \"gpu\" but neither comfyui.package nor comfyui.command is set.";
        }
        {
          assertion = builtins.isInt cfg.gpus || lib.unique cfg.gpus == cfg.gpus;
          message = "services.appliance.gpus lists an index twice: ${builtins.toJSON cfg.gpus}.";
        }
        {
          assertion =
            cfg.redis.passwordFile == null
            || !(cfg.settings.redis ? password || urlHasPassword cfg.settings.redis.url);
          message = "services.appliance.redis: the password is given both inline (settings.redis.password or inside the URL) and as passwordFile; keep passwordFile.";
        }
        {
          assertion = !cfg.redis.tls.enable || lib.hasPrefix "rediss://" cfg.settings.redis.url;
          message = "services.appliance.redis.tls.enable needs a rediss:// URL, got ${cfg.settings.redis.url}.";
        }
        {
          assertion = lib.all (name: lib.elem name knownConnectors) (lib.attrNames cfg.connectors);
          message = "services.appliance.connectors: unknown connector(s) ${
            lib.concatStringsSep ", " (lib.subtractLists knownConnectors (lib.attrNames cfg.connectors))
          } (known: ${lib.concatStringsSep ", " knownConnectors}).";
        }
      ]
      ++ lib.mapAttrsToList (name: c: {
        assertion = c.apiKeyFile == null || !(cfg.settings.connectors.${name} ? api_key);
        message = "services.appliance.connectors.${name}: the API key is given both inline (settings.connectors.${name}.api_key) and as apiKeyFile; keep apiKeyFile.";
      }) cfg.connectors;

      warnings =
        lib.optional (urlHasPassword cfg.settings.redis.url && cfg.redis.passwordFile == null)
          "services.appliance.redis.url contains a password, which ends up world-readable in the Nix store; use redis.passwordFile."
        ++ lib.optional (
          cfg.machineType == "api" && enabledConnectors == { } && !cfg.containerMode
        ) "services.appliance: an api machine without enabled connectors runs no workers.";

      # The typed options, written into the free-form settings (null means: leave the application default).
      services.appliance.settings = {
        machine = {
          type = cfg.machineType;
          container_mode = cfg.containerMode;
        };
        redis = {
          url = cfg.redis.url;
        }
        // lib.optionalAttrs (cfg.redis.tls.caFile != null) { tls_ca_file = cfg.redis.tls.caFile; };
        health.port = cfg.healthPort;
        comfyui = mkIf (cfg.machineType == "gpu") (
          {
            base_port = cfg.comfyui.basePort;
            listen = cfg.comfyui.listen;
            extra_args = cfg.comfyui.extraArgs;
            cpu = cfg.comfyui.cpu;
          }
          // lib.optionalAttrs (cfg.comfyui.command != null) { command = cfg.comfyui.command; }
          // lib.optionalAttrs (cfg.comfyui.modelsDir != null) { models_dir = cfg.comfyui.modelsDir; }
        );
        connectors = lib.mapAttrs (
          _: c:
          {
            enabled = c.enable;
            inherit (c) slots concurrency;
          }
          // lib.optionalAttrs (c.baseUrl != null) { base_url = c.baseUrl; }
        ) cfg.connectors;
      };

      # The packaged units run as User=/Group=appliance (sysusers.d entry in the package); NixOS declares
      # users itself rather than reading a package's sysusers.d.
      users.users.appliance = {
        isSystemUser = true;
        group = "appliance";
        home = "/var/lib/appliance";
        description = "Appliance services";
      };
      users.groups.appliance = { };

      systemd.packages = [ cfg.package ];
      systemd.tmpfiles.packages = [ cfg.package ];
      environment.systemPackages = [ cfg.package ];

      # Every packaged unit reads EnvironmentFile=-/etc/appliance/appliance.env.
      environment.etc."appliance/config.toml".source = configFile;
      environment.etc."appliance/appliance.env".text = ''
        APPLIANCE_CONFIG=/etc/appliance/config.toml
      '';

      networking.firewall.allowedTCPPorts = lib.optional cfg.openFirewall cfg.healthPort;

      # NixOS does not read [Install] sections of packaged units: link the target and the plan here.
      systemd.targets.appliance = {
        overrideStrategy = "asDropin";
        wantedBy = [ "multi-user.target" ];
      };

      systemd.services = {
        appliance-machine = dropIn {
          wantedBy = [ "appliance.target" ];
          serviceConfig = {
            LoadCredential =
              if cfg.containerMode then
                # The supervisor starts the workers itself, so it must hold their secrets too.
                workerCredentials
              else
                supervisorCredentials;
            # In container mode the supervisor stops its workers (drain grace + 30 s to hand jobs back), then
            # ComfyUI (30 s), before it exits; it extends the timeout while it waits, this is the floor.
            TimeoutStopSec = mkDefault (if cfg.containerMode then "${toString (drainGrace + 90)}s" else "30s");
          }
          # ComfyUI runs inside this unit in container mode: lift what its own unit does not impose either
          # (PyTorch JIT-compiles into writable executable memory; CUDA needs the resource syscalls).
          // lib.optionalAttrs (cfg.containerMode && cfg.machineType == "gpu") {
            MemoryDenyWriteExecute = false;
            SystemCallFilter = [
              ""
              "@system-service"
            ];
            LimitNOFILE = mkDefault 65536;
          };
        };
        # OnFailure= handler template: hands the failed worker's jobs back, so it needs Redis.
        "appliance-onfailure@" = dropIn {
          serviceConfig.LoadCredential = supervisorCredentials;
        };
      };
    }

    (mkIf (!cfg.containerMode) {
      systemd.services = lib.listToAttrs (
        map (
          instance:
          lib.nameValuePair (unitName instance) (instanceUnit {
            serviceConfig.LimitNOFILE = mkDefault 65536;
          })
        ) comfyInstances
        ++ map (
          slot:
          let
            gpu = lib.removePrefix "gpu" slot;
            comfyUnit = "${unitName "comfyui@${gpu}"}.service";
          in
          lib.nameValuePair (unitName "worker@${slot}") (
            instanceUnit (
              {
                serviceConfig = {
                  LoadCredential = workerCredentials;
                  # Above the worker's drain grace, so a drain is never cut short by SIGKILL.
                  TimeoutStopSec = mkDefault "${toString (drainGrace + 30)}s";
                  LimitNOFILE = mkDefault 65536;
                };
              }
              # A GPU worker is useless without its ComfyUI: stop and start with it.
              // lib.optionalAttrs (cfg.machineType == "gpu") {
                bindsTo = [ comfyUnit ];
                after = [ comfyUnit ];
              }
            )
          )
        ) workerSlots
      );
    })
  ]);

}
