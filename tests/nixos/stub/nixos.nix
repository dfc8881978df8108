# Declarations of the NixOS options nixos-modules/appliance.nix sets, loosely typed, so the module can be
# evaluated with `lib.evalModules` alone. Types are lax on purpose (the real ones live in nixpkgs); what the
# test checks is what the module *sets*.
{ lib, ... }:

let
  inherit (lib) mkOption types;
  list = mkOption {
    type = types.listOf types.unspecified;
    default = [ ];
  };
  unit = types.submodule {
    freeformType = types.attrsOf types.anything;
    options = {
      wantedBy = list;
      after = list;
      bindsTo = list;
      restartTriggers = list;
      overrideStrategy = mkOption {
        type = types.enum [
          "asDropinIfExists"
          "asDropin"
        ];
        default = "asDropinIfExists";
      };
      serviceConfig = mkOption {
        type = types.attrsOf types.anything;
        default = { };
      };
    };
  };
in
{
  options = {
    assertions = list;
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    systemd.packages = list;
    systemd.tmpfiles.packages = list;
    systemd.services = mkOption {
      type = types.attrsOf unit;
      default = { };
    };
    systemd.targets = mkOption {
      type = types.attrsOf unit;
      default = { };
    };
    environment.systemPackages = list;
    users.users = mkOption {
      type = types.attrsOf (types.attrsOf types.anything);
      default = { };
    };
    users.groups = mkOption {
      type = types.attrsOf (types.attrsOf types.anything);
      default = { };
    };
    environment.etc = mkOption {
      type = types.attrsOf (types.attrsOf types.anything);
      default = { };
    };
    networking.firewall.allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };
  };
}
