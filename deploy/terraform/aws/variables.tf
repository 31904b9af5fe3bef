variable "region" {
  description = "AWS region"
  type        = string
  default     = "eu-central-1"
}

variable "name" {
  description = "Prefix for every resource name"
  type        = string
  default     = "conveyor"
}

variable "vpc_id" {
  description = "VPC the controllers, the database and the agents live in"
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (at least two zones) for controllers, agents and PostgreSQL"
  type        = list(string)
}

variable "public_subnet_ids" {
  description = "Public subnets for the load balancer"
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate for the HTTPS listener"
  type        = string
}

variable "ami_id" {
  description = "Debian 12 or Ubuntu 24.04 AMI for controllers and agents"
  type        = string
}

variable "conveyor_package" {
  description = "pip requirement installed on every instance (a version or a wheel URL)"
  type        = string
  default     = "conveyor==0.1.0"
}

variable "controller_instance_type" {
  description = "Controller instance type (docs/deployment.md: sizing)"
  type        = string
  default     = "t3.large"
}

variable "controller_count" {
  description = "Controllers (at least 2 for high availability; 3 recommended)"
  type        = number
  default     = 3
}

variable "agent_instance_type" {
  description = "Agent instance type"
  type        = string
  default     = "c6i.xlarge"
}

variable "agent_min" {
  description = "Fewest agents"
  type        = number
  default     = 2
}

variable "agent_max" {
  description = "Most agents"
  type        = number
  default     = 20
}

variable "db_instance_class" {
  description = "RDS PostgreSQL instance class"
  type        = string
  default     = "db.m6g.large"
}

variable "agent_token" {
  description = "Conveyor token the agents use (create it on the controller first)"
  type        = string
  sensitive   = true
}
