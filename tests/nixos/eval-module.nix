# Evaluates nixos-modules/appliance.nix with the real nixpkgs `lib` (a checkout of nixpkgs or nixpkgs.lib at
# `libPath`) against the option stubs in ./stub, and returns what the module sets, as JSON-ready data.
#
#   nix-instantiate --eval --strict --json tests/nixos/eval-module.nix \
#     --argstr libPath /path/to/nixpkgs.lib --argstr configJSON '{"enable": true, "machineType": "api"}'
#
# or, with `--argstr vmTest cluster.nix --argstr node api`, that VM test node's services.appliance and
# systemd.services. `extraJSON` is one more module (JSON), e.g. an operator's own unit settings.
{
  libPath,
  configJSON ? null,
  extraJSON ? "{}",
  vmTest ? null,
  node ? null,
}:

let
  lib = import (/. + libPath + "/lib");
  pkgs = import ./stub/pkgs.nix { inherit lib; };

  # The flake outputs a VM test file uses, with stub packages.
  selfStub = {
    packages.${pkgs.stdenv.hostPlatform.system}.default = pkgs.appliance;
    nixosModules.default = { };
  };
  nodeConfig =
    if vmTest != null then
      let
        nodeAttrs =
          (import (./. + "/${vmTest}") {
            self = selfStub;
            inherit pkgs;
          }).nodes.${node};
      in
      {
        services.appliance = nodeAttrs.services.appliance;
        systemd.services = nodeAttrs.systemd.services or { };
      }
    else
      { services.appliance = builtins.fromJSON configJSON; };

  evaluated = lib.evalModules {
    modules = [
      ./stub/nixos.nix
      ../../nixos-modules/appliance.nix
      { _module.args.pkgs = pkgs; }
      nodeConfig
      (builtins.fromJSON extraJSON)
    ];
  };
  inherit (evaluated) config;

  unitView = unit: {
    inherit (unit)
      wantedBy
      wants
      after
      bindsTo
      overrideStrategy
      environment
      ;
    serviceConfig = unit.serviceConfig;
  };

  configFile = config.environment.etc."appliance/config.toml".source;

  # TOML has no null; pkgs.formats.toml would fail to render one.
  hasNull =
    value:
    if value == null then
      true
    else if builtins.isAttrs value then
      lib.any hasNull (lib.attrValues value)
    else if builtins.isList value then
      lib.any hasNull value
    else
      false;
in
{
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
}
// lib.optionalAttrs (lib.all (a: a.assertion) config.assertions) {
  services = lib.mapAttrs (_: unitView) config.systemd.services;
  targets = lib.mapAttrs (_: unitView) config.systemd.targets;
  settings = config.services.appliance.settings;
  settingsHaveNull = hasNull config.services.appliance.settings;
  etc = lib.mapAttrs (_: e: e.text or (e.source.name or e.source)) config.environment.etc;
  # The build step that checks the rendered settings (a runCommand, kept as data by the stub pkgs).
  configCheck = {
    inherit (configFile) buildCommand;
    tools = map (p: p.name) configFile.nativeBuildInputs;
    rendered = configFile.settings.passthru.value;
  };
  redisServers = lib.mapAttrs (_: r: {
    inherit (r)
      enable
      user
      unixSocket
      requirePassFile
      ;
  }) config.services.redis.servers;
  extraGroups = lib.mapAttrs (_: u: u.extraGroups or [ ]) config.users.users;
  meta = {
    inherit (config.meta) maintainers;
    doc = toString config.meta.doc;
  };
  firewall = config.networking.firewall.allowedTCPPorts;
  users = lib.mapAttrs (_: u: u.group or null) config.users.users;
  groups = lib.attrNames config.users.groups;
  packages = map (p: p.name) config.systemd.packages;
  tmpfiles = map (p: p.name) config.systemd.tmpfiles.packages;
}
