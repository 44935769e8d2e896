# deckhand pool AMI: Debian 12 + Docker + the static deckhand binary, its
# systemd unit (enabled), the log forwarder (rsyslog, off until the user data
# names a sink), the metadata-service block, a config skeleton and the
# user data helper, for x86-64 or for arm64 (Graviton). Build from the
# repository root, after the static build of the same architecture:
#
#   scripts/build-static --arch arm64
#   packer init packer/deckhand.pkr.hcl
#   packer build -var arch=arm64 -var deckhand_version=0.1.0 packer/deckhand.pkr.hcl
#
# One build per architecture: a mixed pool's launch template (or mixed-instances
# policy) names both AMIs (docs/operations.md).
#
# Written for Packer >= 1.7 with the amazon plugin. docs/packaging.md says how
# it is checked (Debian's Packer 1.6.6, which predates plugins, plus an HCL2
# parser).

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

variable "region" {
  type        = string
  default     = "eu-west-1"
  description = "Region to build in; copy the AMI elsewhere afterwards if needed."
}

variable "arch" {
  type        = string
  default     = "x86_64"
  description = "The AMI's architecture: x86_64, or arm64 for Graviton."
}

variable "instance_type" {
  type        = string
  default     = ""
  description = "Build instance; empty means the architecture's default (t3.small, t4g.small)."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet for the build instance; empty means the default VPC."
}

variable "deckhand_binary" {
  type        = string
  default     = ""
  description = "The static deckhand binary, relative to where packer runs; empty means what scripts/build-static --arch ARCH makes."
}

variable "deckhand_version" {
  type        = string
  default     = "dev"
  description = "Goes into the AMI name and tags; use the binary's --version."
}

variable "prepull_images" {
  type        = list(string)
  default     = []
  description = "Images to pull into the AMI so that boot-time warming is quick. The build instance must be able to pull them without credentials."
}

variable "box_base_image" {
  type        = string
  default     = "deckhand-box-base:dev"
  description = "The box's base: a local Docker image of a Debian 12 root (scripts/box builds it)."
}

variable "box_image" {
  type        = string
  default     = "deckhand-box"
  description = "Repository of the box image the Docker source makes; tagged with deckhand_version."
}

variable "volume_size_gb" {
  type        = number
  default     = 40
  description = "Root volume; Docker images and job workspaces live on it."
}

locals {
  # AMI names must be unique; a UTC stamp also sorts them by age.
  build_stamp = formatdate("YYYYMMDDhhmmss", timestamp())

  # Per architecture: Debian's image name, EC2's architecture, a build instance
  # of that architecture, and the binary scripts/build-static makes for it. An
  # unknown arch fails here, at validate.
  platform = {
    x86_64 = {
      debian        = "amd64"
      ec2           = "x86_64"
      instance_type = "t3.small"
      binary        = "target/x86_64-unknown-linux-gnu/release/deckhand"
    }
    arm64 = {
      debian        = "arm64"
      ec2           = "arm64"
      instance_type = "t4g.small"
      binary        = "target/aarch64-unknown-linux-gnu/release/deckhand"
    }
  }[var.arch]

  instance_type   = var.instance_type != "" ? var.instance_type : local.platform.instance_type
  deckhand_binary = var.deckhand_binary != "" ? var.deckhand_binary : local.platform.binary
}

source "amazon-ebs" "debian12" {
  region        = var.region
  instance_type = local.instance_type
  subnet_id     = var.subnet_id
  # Debian's cloud images log in as "admin".
  ssh_username = "admin"

  ami_name        = "deckhand-${var.deckhand_version}-${var.arch}-${local.build_stamp}"
  ami_description = "deckhand ${var.deckhand_version} CI pool worker on Debian 12 (${var.arch})"

  # The newest official Debian 12 image. 136693071363 is the Debian project's
  # AWS account; the owner filter keeps look-alike public AMIs out.
  source_ami_filter {
    filters = {
      name                = "debian-12-${local.platform.debian}-*"
      architecture        = local.platform.ec2
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["136693071363"]
    most_recent = true
  }

  # IMDSv2 only for the build instance too, with a hop limit of 1 so that
  # nothing in a container on it could fetch a token.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  # Instances launched from this AMI default to IMDSv2 only, even if a launch
  # template forgets to say so.
  imds_support = "v2.0"

  # gp3 with its baseline iops and throughput written out (Packer 1.6.6
  # rejects gp3 without them; newer plugins default to the same values).
  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = var.volume_size_gb
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    delete_on_termination = true
  }

  tags = {
    Name               = "deckhand-${var.deckhand_version}-${var.arch}"
    "deckhand:version" = var.deckhand_version
    "deckhand:arch"    = var.arch
  }
  run_tags = {
    Name = "packer-deckhand-build"
  }
}

# The box (scripts/box, docs/packaging.md): the very provisioning below, into a
# local image that boots under systemd in a container, as an instance of the
# AMI would. Build it with -only=deckhand.docker.box. Nothing is pulled (the base image
# is local, and Docker would look for a missing one on Docker Hub), and the
# build container has no network: the base already holds Docker, so
# provision.sh skips apt.
source "docker" "box" {
  image       = var.box_base_image
  pull        = false
  commit      = true
  run_command = ["-d", "-i", "-t", "--network=none", "--entrypoint=/bin/sh", "--", "{{.Image}}"]
  # The build ran /bin/sh; the box runs systemd (scripts/box stops it with
  # SIGRTMIN+3, on which it halts cleanly).
  changes = [
    "ENTRYPOINT [\"/sbin/init\"]",
    "ENV container=docker",
  ]
}

build {
  name    = "deckhand"
  sources = ["source.amazon-ebs.debian12", "source.docker.box"]

  # The file provisioner does not create directories.
  provisioner "shell" {
    inline = ["mkdir -p /tmp/deckhand-stage"]
  }

  # provision.sh runs it (--version) before installing it: a binary of the
  # other architecture stops the build there.
  provisioner "file" {
    source      = local.deckhand_binary
    destination = "/tmp/deckhand-stage/deckhand"
  }

  # Every unit the host runs: systemd/ in the repository.
  provisioner "file" {
    source      = "${path.root}/../systemd/deckhand.service"
    destination = "/tmp/deckhand-stage/deckhand.service"
  }

  provisioner "file" {
    source      = "${path.root}/../systemd/deckhand-imds-block.service"
    destination = "/tmp/deckhand-stage/deckhand-imds-block.service"
  }

  provisioner "file" {
    source      = "${path.root}/../systemd/deckhand-forwarder.service"
    destination = "/tmp/deckhand-stage/deckhand-forwarder.service"
  }

  provisioner "file" {
    source      = "${path.root}/../systemd/deckhand-forwarder.path"
    destination = "/tmp/deckhand-stage/deckhand-forwarder.path"
  }

  provisioner "file" {
    source      = "${path.root}/../systemd/deckhand-forwarder-trim.timer"
    destination = "/tmp/deckhand-stage/deckhand-forwarder-trim.timer"
  }

  provisioner "file" {
    source      = "${path.root}/../systemd/deckhand-forwarder-trim.service"
    destination = "/tmp/deckhand-stage/deckhand-forwarder-trim.service"
  }

  # The user data helper: baked so that boot-time user data can stay short,
  # and run once here (--skeleton) to install the metadata block and the
  # config skeleton exactly as user data would.
  provisioner "file" {
    source      = "${path.root}/../userdata/bootstrap.sh"
    destination = "/tmp/deckhand-stage/bootstrap.sh"
  }

  # Referenced by the unit's Documentation=.
  provisioner "file" {
    source      = "${path.root}/../docs/operations.md"
    destination = "/tmp/deckhand-stage/operations.md"
  }

  # Docker, rsyslog, the binary, the units, the skeleton, the pre-pulled images.
  provisioner "shell" {
    script           = "${path.root}/provision.sh"
    environment_vars = ["PREPULL_IMAGES=${join(" ", var.prepull_images)}"]
    execute_command  = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }} install"
  }

  # Last: leave no credentials, SSH keys, instance identity or history in the
  # image. Nothing may run on the instance after this.
  provisioner "shell" {
    script          = "${path.root}/provision.sh"
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }} cleanup"
  }

  # The AMI id for the launch template and the instance refresh.
  post-processor "manifest" {
    only       = ["amazon-ebs.debian12"]
    output     = "packer-manifest.json"
    strip_path = true
  }

  post-processor "docker-tag" {
    only       = ["docker.box"]
    repository = var.box_image
    tag        = [var.deckhand_version]
  }
}
