# EXAMPLE — a starting point, not a maintained module. Review every resource (sizes,
# networks, IAM, backups) before using it. See docs/deployment.md.
terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }
}

provider "aws" {
  region = var.region
}
