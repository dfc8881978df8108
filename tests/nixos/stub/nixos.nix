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
      wants = list;
      after = list;
      bindsTo = list;
      environment = mkOption {
        type = types.attrsOf types.str;
        default = { };
      };
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
    meta = {
      maintainers = list;
      doc = mkOption {
        type = types.path;
      };
    };
    # services.redis.servers.<name>, with the defaults nixos/modules/services/databases/redis.nix gives the
    # options the module reads (user and socket of a named server).
    services.redis.servers = mkOption {
      type = types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            freeformType = types.attrsOf types.anything;
            options = {
              enable = mkOption {
                type = types.bool;
                default = false;
              };
              user = mkOption {
                type = types.str;
                default = "redis-${name}";
              };
              unixSocket = mkOption {
                type = types.nullOr types.str;
                default = "/run/redis-${name}/redis.sock";
              };
              port = mkOption {
                type = types.port;
                default = 0;
              };
              requirePassFile = mkOption {
                type = types.nullOr types.str;
                default = null;
              };
            };
          }
        )
      );
      default = { };
    };
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
