# services.appliance: a GPU or API machine of the appliance job pool.
#
# The unit files come from the package (`systemd.packages`; rendered at build time by `appliance units render`):
# this module does not re-declare them, it only adds drop-ins. It links the instances of the machine's service
# plan into appliance.target (what `appliance units install` does on other hosts), hands secrets over with
# LoadCredential=, and renders `settings` to the TOML file every process reads through APPLIANCE_CONFIG,
# validated at build time by the package's own `appliance config check`.
#
# What the module knows about the application (connector names, credential ids, unit names, plan rules,
# defaults, stop margins, the settings key tree) comes from ../nix/contract.json, which `python -m
# appliance.contract` generates from the code and a test keeps current. The plan is the settings': the typed
# options below are written into `settings` with mkDefault, and the units are computed from the resulting
# settings exactly as appliance.machine.plan computes them at run time (`machine.gpus` included).
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

  contract = lib.importJSON ../nix/contract.json;

  cfg = config.services.appliance;
  # The settings as the processes will see them (the typed options are defaults inside them).
  s = cfg.settings;

  tomlFormat = pkgs.formats.toml { };

  knownConnectors = contract.connectors;
  redisCredential = contract.credentials.redis;
  # appliance.secrets.connector_credential; a connector without an entry (echo) calls no keyed API, and an
  # apiKeyFile given for it anyway is loaded under the id the worker looks for, `<name>-api-key`.
  connectorCredential = name: contract.credentials.connectors.${name} or "${name}-api-key";

  unitName = name: "${contract.units.prefix}${name}";

  # --- the service plan, from the settings (appliance.machine.plan.compute_plan) ---------------------------

  optionGpus = if builtins.isInt cfg.gpus then lib.range 0 (cfg.gpus - 1) else cfg.gpus;
  machineType = s.machine.type or "api";
  planGpus = lib.sort lib.lessThan (s.machine.gpus or [ ]);
  cpuOnly = (s.comfyui.cpu or false) || (s.machine.gpu_cpu_mode or false);
  comfyIndices = if planGpus == [ ] && cpuOnly then [ 0 ] else planGpus;
  basePort = s.comfyui.base_port or contract.defaults.comfyuiBasePort;

  connectorSettings = s.connectors or { };
  enabledConnectors = lib.filterAttrs (
    _: c: (c.enabled or false) && (c.slots or 1) > 0
  ) connectorSettings;

  comfyInstances = lib.optionals (machineType == "gpu") (
    map (i: "${contract.plan.comfyuiInstance}${toString i}") comfyIndices
  );
  # Worker instance -> the connector whose key it gets (null: a GPU worker, which needs none).
  workerInstances =
    if machineType == "gpu" then
      map (i: {
        name = "${contract.plan.gpuWorker}${toString i}";
        connector = null;
        comfyUnit = "${unitName "${contract.plan.comfyuiInstance}${toString i}"}.service";
      }) comfyIndices
    else
      lib.concatLists (
        lib.mapAttrsToList (
          name: c:
          map (j: {
            name = "${contract.plan.apiWorker}${name}${toString j}";
            connector = name;
            comfyUnit = null;
          }) (lib.range 0 ((c.slots or 1) - 1))
        ) enabledConnectors
      );

  # --- credentials --------------------------------------------------------------------------------------

  # LoadCredential= entries (id:path) for each secret given as a file. The packaged units load their
  # credentials from /etc/credstore by id; the empty first entry resets that list, so only the files
  # configured here are loaded and a missing credstore entry cannot fail a unit.
  sharedCredentials =
    lib.optional (cfg.redis.passwordFile != null) "${redisCredential}:${cfg.redis.passwordFile}"
    ++ lib.mapAttrsToList (id: path: "${id}:${path}") cfg.extraCredentials;
  keyFiles = lib.filterAttrs (_: c: c.apiKeyFile != null) cfg.connectors;
  connectorCredentials =
    name:
    lib.optional (keyFiles ? ${name}) "${connectorCredential name}:${keyFiles.${name}.apiKeyFile}";
  allConnectorCredentials = lib.concatMap connectorCredentials (lib.attrNames enabledConnectors);
  # Supervisor and failure handler talk to Redis only; a worker also gets its own connector's key, no other.
  supervisorCredentials = [ "" ] ++ sharedCredentials;
  workerCredentials =
    connector: [ "" ] ++ sharedCredentials ++ lib.optionals (connector != null) (connectorCredentials connector);

  # --- settings checks ----------------------------------------------------------------------------------

  # Dotted keys of `value` that the settings schema (contract.settingsKeys) does not have.
  unknownKeys =
    tree: value: prefix:
    if tree == true || !builtins.isAttrs value then
      [ ]
    else
      lib.concatLists (
        lib.mapAttrsToList (
          key: sub:
          let
            subtree = tree.${key} or tree."*" or null;
          in
          if subtree == null then [ "${prefix}${key}" ] else unknownKeys subtree sub "${prefix}${key}."
        ) value
      );
  # Dotted keys of `value` matching `path` (a list; "*" matches any table entry).
  findKeys =
    value: path: prefix:
    if path == [ ] then
      [ (lib.removeSuffix "." prefix) ]
    else if !builtins.isAttrs value then
      [ ]
    else
      let
        head = builtins.head path;
        rest = builtins.tail path;
      in
      if head == "*" then
        lib.concatLists (lib.mapAttrsToList (k: v: findKeys v rest "${prefix}${k}.") value)
      else if value ? ${head} then
        findKeys value.${head} rest "${prefix}${head}."
      else
        [ ];
  inlineSecrets = lib.concatMap (key: findKeys s (lib.splitString "." key) "") contract.secretKeys;
  badKeys = unknownKeys contract.settingsKeys s "";

  # A password inside a redis:// URL, as redis-py accepts it (redis://[user]:password@host).
  urlHasPassword = url: builtins.match "[a-z]+://[^/@]*:[^/@]+@.*" url != null;

  # Rendered, then checked by the package itself: the build fails with `appliance config check`'s message,
  # which names the key. --no-open-files: files named by `*_file` settings do not exist in the build sandbox.
  settingsToml = tomlFormat.generate "appliance-settings.toml" s;
  configFile =
    pkgs.runCommand "appliance.toml"
      {
        nativeBuildInputs = [ cfg.package ];
        settings = settingsToml;
      }
      ''
        appliance config check --no-open-files "$settings"
        cp "$settings" "$out"
      '';

  drainGrace = builtins.ceil (s.worker.drain_grace_s or contract.defaults.drainGraceS);

  # --- units --------------------------------------------------------------------------------------------

  localRedisUnit = "redis-${redisServerName}.service";
  redisServerName = "appliance";

  # Drop-in on a packaged unit or template instance. "asDropin": instance names have no unit file of their
  # own, so the default strategy would write a full unit without ExecStart. `env` is the unit's Environment=.
  dropInWith =
    env: extra:
    lib.mkMerge [
      {
        overrideStrategy = "asDropin";
        restartTriggers = [ configFile ];
        environment = env;
        serviceConfig = lib.optionalAttrs (cfg.environmentFile != null) {
          EnvironmentFile = [ cfg.environmentFile ];
        };
        wants = lib.optional cfg.redis.createLocally localRedisUnit;
        after = lib.optional cfg.redis.createLocally localRedisUnit;
      }
      extra
    ];
  dropIn = dropInWith cfg.environment;

  instanceUnit = env: extra: dropInWith env ({ wantedBy = [ contract.units.target ]; } // extra);

  # Device access of a ComfyUI unit by acceleration. The packaged unit allows the NVIDIA nodes; "" resets.
  comfyDevices = {
    cuda = { };
    rocm = {
      DeviceAllow = [
        ""
        "char-drm rw"
        "char-kfd rw"
      ];
      SupplementaryGroups = [
        "render"
        "video"
      ];
    };
    cpu.DeviceAllow = [ "" ];
  };

  # Trees linked into each ComfyUI instance directory (appliance.machine.comfyui.prepare_instance_dir).
  modelsTree = pkgs.linkFarm "appliance-comfyui-models" (
    lib.mapAttrsToList (name: path: { inherit name path; }) cfg.comfyui.models
  );
  customNodesTree = pkgs.linkFarm "appliance-comfyui-custom-nodes" (
    lib.mapAttrsToList (name: path: { inherit name path; }) cfg.comfyui.customNodes
  );

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
            File holding the API key, read by systemd as root and handed to this connector's workers (and no
            other unit) as the credential `${connectorCredential name}` (LoadCredential=), so it never enters
            the Nix store, the unit's environment or a process's arguments. An inline
            `settings.connectors.${name}.api_key` would be stored world-readable in the Nix store and is refused.
          '';
        };
      };
    };
in
{
  meta = {
    # The option's type accepts entries of nixpkgs' lib.maintainers only, where this project has none yet;
    # the maintainers are the project's (README.md).
    maintainers = [ ];
    doc = ./appliance.md;
  };

  imports = [
    (lib.mkRemovedOptionModule [
      "services"
      "appliance"
      "comfyui"
      "cpu"
    ] "Use services.appliance.comfyui.acceleration = \"cpu\"; it also closes the units' device access.")
  ];

  ###### interface

  options.services.appliance = {
    enable = mkEnableOption "the appliance machine (appliance.target and the units of its service plan)";

    package = lib.mkPackageOption pkgs "appliance" {
      extraDescription = "Its unit files, tmpfiles.d entry and `appliance config check` are used.";
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
        Written to `settings.machine.type`.
      '';
    };

    gpus = mkOption {
      type = types.either types.ints.unsigned (types.listOf types.ints.unsigned);
      default = [ ];
      example = literalExpression "[ 0 1 ]";
      description = ''
        GPUs of a gpu machine: a list of indices, or a count N meaning indices 0 .. N-1. Each index gets its
        own ComfyUI on port `comfyui.basePort + index`. Written to `settings.machine.gpus`, from which the
        supervisor plans too, so the units started here are the units it expects.
      '';
    };

    comfyui = {
      package = lib.mkPackageOption pkgs "comfyui" {
        nullable = true;
        default = null;
        example = [ "comfyui" ];
        extraDescription = ''
          Its main program starts ComfyUI. For CUDA, take it from a nixpkgs instance with
          `config.cudaSupport = true; config.allowUnfree = true;`. Ignored when `command` is set.
        '';
      };
      command = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = if cfg.comfyui.package != null then [ (lib.getExe cfg.comfyui.package) ] else null;
        defaultText = literalExpression ''if comfyui.package != null then [ (lib.getExe comfyui.package) ] else null'';
        example = literalExpression ''[ "''${appliance.pythonEnv}/bin/python" "-m" "appliance.standins.comfyui" ]'';
        description = ''
          Command that starts one ComfyUI; `appliance comfyui` appends the port, the listen address and the
          directory flags (`--base-directory` and the others, all into the instance's StateDirectory).
        '';
      };
      basePort = mkOption {
        type = types.port;
        default = contract.defaults.comfyuiBasePort;
        description = "Port of the ComfyUI for GPU 0; GPU N listens on basePort + N.";
      };
      listen = mkOption {
        type = types.str;
        default = contract.defaults.comfyuiListen;
        description = "Address ComfyUI listens on. Only the local worker talks to it.";
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "--disable-all-custom-nodes" ];
        description = "Extra ComfyUI command-line arguments.";
      };
      acceleration = mkOption {
        type = types.enum [
          "cuda"
          "rocm"
          "cpu"
        ];
        default = "cuda";
        description = ''
          Which devices the ComfyUI units may open. `cuda`: the NVIDIA nodes (the packaged unit's default).
          `rocm`: `/dev/dri` and `/dev/kfd` (DeviceAllow=char-drm, char-kfd) with the `render` and `video`
          groups. `cpu`: no devices, ComfyUI runs with `--cpu`; with no `gpus`, one CPU-run instance
          (development, VM tests).
        '';
      };
      models = mkOption {
        type = types.attrsOf types.path;
        default = { };
        example = literalExpression ''
          {
            "checkpoints/sd_xl_base_1.0.safetensors" = pkgs.fetchurl { url = "…"; hash = "sha256-…"; };
          }
        '';
        description = ''
          Model files (derivations or paths) by their path under ComfyUI's `models` directory. They are
          gathered into one store tree that each instance's `models` directory links to. Mutually
          exclusive with `modelsDir`.
        '';
      };
      modelsDir = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/models";
        description = ''
          A models directory outside the store, linked as each instance's `models` directory. The units run
          with ProtectSystem=strict and ProtectHome=yes: it is readable anywhere outside /home.
        '';
      };
      customNodes = mkOption {
        type = types.attrsOf types.path;
        default = { };
        example = literalExpression ''{ ComfyUI-Impact-Pack = pkgs.fetchFromGitHub { … }; }'';
        description = ''
          Custom node directories (derivations or paths) by name, gathered into one store tree that each
          instance's `custom_nodes` directory links to. Their Python dependencies must be in ComfyUI's
          interpreter (the `package`).
        '';
      };
      environment = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = {
          PYTORCH_CUDA_ALLOC_CONF = "expandable_segments:True";
        };
        description = ''
          Environment of the ComfyUI units (and of the supervisor in container mode, which starts ComfyUI).
          `appliance comfyui` passes it on to ComfyUI, minus anything secret-looking.
        '';
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
        default = contract.defaults.redisUrl;
        example = "rediss://redis.internal:6380/0";
        description = ''
          Redis URL without the password (redis://, rediss:// or unix://). A password written into the URL
          would be stored world-readable in the Nix store and is refused: use `passwordFile`.
        '';
      };
      createLocally = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Run a Redis for this machine alone (`services.redis.servers.appliance`, reachable only through its
          unix socket, whose group the `appliance` user joins) and point `url` at it. For single machines
          and development; a pool of machines shares one Redis elsewhere.
        '';
      };
      passwordFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/redis-password";
        description = ''
          File holding the Redis password, handed to the processes as the credential `${redisCredential}`.
          With `createLocally`, the local Redis requires it too.
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
      default = contract.defaults.healthPort;
      description = "Port of the health server (/health /ready /status /metrics).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `healthPort` in the firewall (for Prometheus and load balancers).";
    };

    api = {
      enable = mkEnableOption ''
        the HTTP job API (appliance-api.service, part of appliance.target): jobs over HTTP with per-tenant API
        keys, live progress and signed webhooks (docs/api.md). Give it a Redis user of the `api` ACL role
        (`appliance redis acl --role api`) through redis.passwordFile and settings.redis.username
      '';
      port = mkOption {
        type = types.port;
        default = contract.defaults.apiPort;
        description = "Port of the HTTP job API (`api.port`).";
      };
      listen = mkOption {
        type = types.str;
        default = contract.defaults.apiListen;
        example = "0.0.0.0";
        description = "Address the API binds (`api.host`); loopback by default (put a TLS proxy in front).";
      };
      processes = mkOption {
        type = types.ints.between 1 64;
        default = contract.defaults.apiProcesses;
        example = 4;
        description = ''
          API processes serving `port` (`api.processes`): the service's main process starts the others on the
          same port (SO_REUSEPORT) and stops them with it. One process uses one core: up to one per core.
        '';
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open the API's `port` in the firewall.";
      };
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

    environment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        APPLIANCE_LOGGING__LEVEL = "DEBUG";
      };
      description = ''
        Environment of every appliance unit. Stored world-readable in the Nix store: no secrets (use the
        `*File` options or `environmentFile`).
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/appliance.env";
      description = ''
        An EnvironmentFile= of every appliance unit, read by systemd at start (outside the store), e.g.
        `APPLIANCE_*` overrides kept out of the store. Prefer the `*File` options for secrets: variables are
        visible to every process of the unit.
      '';
    };

    extraCredentials = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = literalExpression ''{ s3-secret-access-key = "/run/secrets/s3"; monitor-token = "/run/secrets/monitor"; }'';
      description = ''
        More credentials by id (${lib.concatStringsSep ", " contract.credentials.all}), each loaded from a
        file with LoadCredential= into the supervisor, the failure handler and every worker.
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
        Settings of every appliance process (see docs/configuration.md), rendered to TOML, checked at build
        time with `appliance config check` and passed as APPLIANCE_CONFIG. The typed options above are
        written into it with `mkDefault`, so a key set here wins over its option. Unknown keys and inline
        secrets are refused: the file is world-readable in the Nix store.
      '';
    };
  };

  ###### implementation

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = badKeys == [ ];
          message = "services.appliance.settings: unknown setting(s) ${lib.concatStringsSep ", " badKeys} (see docs/configuration.md).";
        }
        {
          assertion = inlineSecrets == [ ];
          message = "services.appliance.settings: ${lib.concatStringsSep ", " inlineSecrets} would be stored world-readable in the Nix store; use redis.passwordFile, connectors.<name>.apiKeyFile or extraCredentials.";
        }
        {
          assertion = !urlHasPassword (s.redis.url or "");
          message = "services.appliance.redis.url contains a password, which would be stored world-readable in the Nix store; use redis.passwordFile.";
        }
        {
          assertion = machineType != "gpu" || comfyIndices != [ ];
          message = "services.appliance: machineType is \"gpu\" but gpus is empty; set gpus (a count or a list of indices) or comfyui.acceleration = \"cpu\" for a CPU-run ComfyUI.";
        }
        {
          assertion = machineType != "gpu" || cfg.comfyui.command != null || s ? comfyui.command;
          message = "services.appliance: machineType is \"gpu\" but neither comfyui.package nor comfyui.command is set.";
        }
        {
          assertion = builtins.isInt cfg.gpus || lib.unique cfg.gpus == cfg.gpus;
          message = "services.appliance.gpus lists an index twice: ${builtins.toJSON cfg.gpus}.";
        }
        {
          assertion = comfyIndices == [ ] || basePort + lib.last comfyIndices <= 65535;
          message = "services.appliance.comfyui.basePort ${toString basePort} + GPU index ${
            toString (lib.last ([ 0 ] ++ comfyIndices))
          } is beyond port 65535.";
        }
        {
          assertion = !cfg.redis.tls.enable || lib.hasPrefix "rediss://" (s.redis.url or "");
          message = "services.appliance.redis.tls.enable needs a rediss:// URL, got ${s.redis.url or "none"}.";
        }
        {
          assertion = !(cfg.redis.createLocally && cfg.redis.tls.enable);
          message = "services.appliance.redis: createLocally serves a unix socket; tls.enable does not apply.";
        }
        {
          assertion = cfg.comfyui.models == { } || cfg.comfyui.modelsDir == null;
          message = "services.appliance.comfyui: set models or modelsDir, not both (both would be the instance's models directory).";
        }
        (
          let
            unknown = lib.subtractLists knownConnectors (
              lib.unique (lib.attrNames cfg.connectors ++ lib.attrNames connectorSettings)
            );
          in
          {
            assertion = unknown == [ ];
            message = "services.appliance.connectors: unknown connector(s) ${lib.concatStringsSep ", " unknown} (known: ${lib.concatStringsSep ", " knownConnectors}).";
          }
        )
      ];

      warnings = lib.optional (
        machineType == "api" && enabledConnectors == { } && !cfg.containerMode
      ) "services.appliance: an api machine without enabled connectors runs no workers.";

      # The typed options, written into the free-form settings at mkDefault: a key set in `settings` wins.
      services.appliance.settings = {
        machine = {
          type = mkDefault cfg.machineType;
          container_mode = mkDefault cfg.containerMode;
        }
        // lib.optionalAttrs (cfg.machineType == "gpu") { gpus = mkDefault optionGpus; };
        redis = {
          url = mkDefault cfg.redis.url;
        }
        // lib.optionalAttrs (cfg.redis.tls.caFile != null) { tls_ca_file = mkDefault cfg.redis.tls.caFile; };
        health.port = mkDefault cfg.healthPort;
        api = mkIf cfg.api.enable {
          host = mkDefault cfg.api.listen;
          port = mkDefault cfg.api.port;
          processes = mkDefault cfg.api.processes;
        };
        comfyui = mkIf (cfg.machineType == "gpu") (
          {
            base_port = mkDefault cfg.comfyui.basePort;
            listen = mkDefault cfg.comfyui.listen;
            extra_args = mkDefault cfg.comfyui.extraArgs;
            cpu = mkDefault (cfg.comfyui.acceleration == "cpu");
          }
          // lib.optionalAttrs (cfg.comfyui.command != null) { command = mkDefault cfg.comfyui.command; }
          // lib.optionalAttrs (cfg.comfyui.modelsDir != null) { models_dir = mkDefault cfg.comfyui.modelsDir; }
          // lib.optionalAttrs (cfg.comfyui.models != { }) { models_dir = mkDefault "${modelsTree}"; }
          // lib.optionalAttrs (cfg.comfyui.customNodes != { }) {
            custom_nodes_dir = mkDefault "${customNodesTree}";
          }
        );
        connectors = lib.mapAttrs (
          _: c:
          {
            enabled = mkDefault c.enable;
            slots = mkDefault c.slots;
            concurrency = mkDefault c.concurrency;
          }
          // lib.optionalAttrs (c.baseUrl != null) { base_url = mkDefault c.baseUrl; }
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

      networking.firewall.allowedTCPPorts =
        lib.optional cfg.openFirewall cfg.healthPort
        ++ lib.optional (cfg.api.enable && cfg.api.openFirewall) cfg.api.port;

      # NixOS does not read [Install] sections of packaged units: link the target and the plan here.
      systemd.targets.appliance = {
        overrideStrategy = "asDropin";
        wantedBy = [ "multi-user.target" ];
      };

      systemd.services = {
        appliance-machine = dropInWith (
          cfg.environment // lib.optionalAttrs (cfg.containerMode && machineType == "gpu") cfg.comfyui.environment
        ) {
          wantedBy = [ contract.units.target ];
          serviceConfig = {
            LoadCredential =
              if cfg.containerMode then
                # The supervisor starts the workers itself, so it must hold their secrets too.
                supervisorCredentials ++ allConnectorCredentials
              else
                supervisorCredentials;
            # In container mode the supervisor stops its workers, then ComfyUI, before it exits; it extends
            # the timeout while it waits, this is the floor.
            TimeoutStopSec = mkDefault (
              if cfg.containerMode then
                "${toString (drainGrace + contract.stopMarginsS.containerMode)}s"
              else
                "30s"
            );
          }
          # ComfyUI runs inside this unit in container mode: lift what its own unit does not impose either
          # (PyTorch JIT-compiles into writable executable memory; CUDA needs the resource syscalls). At
          # mkDefault, like every tunable here: a value of yours wins.
          // lib.optionalAttrs (cfg.containerMode && machineType == "gpu") (
            lib.mapAttrs (_: mkDefault) (
              {
                MemoryDenyWriteExecute = false;
                SystemCallFilter = [
                  ""
                  "@system-service"
                ];
                LimitNOFILE = 65536;
              }
              // comfyDevices.${cfg.comfyui.acceleration}
            )
          );
        };
        # The HTTP job API: Redis credentials, and the S3 secret (extraCredentials) to presign output URLs.
        appliance-api = mkIf cfg.api.enable (dropIn {
          wantedBy = [ contract.units.target ];
          serviceConfig.LoadCredential = supervisorCredentials;
        });
        # OnFailure= handler template: hands the failed worker's jobs back, so it needs Redis.
        "appliance-onfailure@" = dropIn {
          serviceConfig.LoadCredential = supervisorCredentials;
        };
      };
    }

    (mkIf cfg.redis.createLocally {
      services.redis.servers.${redisServerName} = {
        enable = true;
        # No TCP port (the default for a named server): only the unix socket, mode 660, group redis-appliance.
        requirePassFile = mkIf (cfg.redis.passwordFile != null) cfg.redis.passwordFile;
      };
      users.users.appliance.extraGroups = [ config.services.redis.servers.${redisServerName}.user ];
      services.appliance.redis.url = mkDefault "unix://${
        config.services.redis.servers.${redisServerName}.unixSocket
      }";
    })

    (mkIf (!cfg.containerMode) {
      systemd.services = lib.listToAttrs (
        map (
          instance:
          lib.nameValuePair (unitName instance) (instanceUnit (cfg.environment // cfg.comfyui.environment) {
            serviceConfig = lib.mapAttrs (_: mkDefault) (
              { LimitNOFILE = 65536; } // comfyDevices.${cfg.comfyui.acceleration}
            );
          })
        ) comfyInstances
        ++ map (
          worker:
          lib.nameValuePair (unitName worker.name) (
            instanceUnit cfg.environment (
              {
                serviceConfig = {
                  LoadCredential = workerCredentials worker.connector;
                  # Above the worker's drain grace, so a drain is never cut short by SIGKILL.
                  TimeoutStopSec = mkDefault "${toString (drainGrace + contract.stopMarginsS.worker)}s";
                  LimitNOFILE = mkDefault 65536;
                };
              }
              # A GPU worker is useless without its ComfyUI: stop and start with it.
              // lib.optionalAttrs (worker.comfyUnit != null) {
                bindsTo = [ worker.comfyUnit ];
                after = [ worker.comfyUnit ];
              }
            )
          )
        ) workerInstances
      );
    })
  ]);

}
