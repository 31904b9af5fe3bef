# EXAMPLE: Conveyor on AWS — controllers in an auto scaling group behind an
# Application Load Balancer, PostgreSQL on RDS (Multi-AZ), blobs on EFS, and an auto
# scaling group of agents that connect out to the load balancer.

locals {
  tags = { Application = "conveyor" }
}

# ---------------------------------------------------------------- security groups

resource "aws_security_group" "lb" {
  name_prefix = "${var.name}-lb-"
  vpc_id      = var.vpc_id
  description = "Conveyor load balancer: HTTPS from users and agents"
  tags        = local.tags

  ingress {
    description = "HTTPS"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  egress {
    description = "To the controllers"
    from_port   = 8080
    to_port     = 8080
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_security_group" "controller" {
  name_prefix = "${var.name}-controller-"
  vpc_id      = var.vpc_id
  description = "Conveyor controllers: HTTP from the load balancer only"
  tags        = local.tags

  ingress {
    description     = "From the load balancer"
    from_port       = 8080
    to_port         = 8080
    protocol        = "tcp"
    security_groups = [aws_security_group.lb.id]
  }

  egress {
    description = "PostgreSQL, EFS, webhooks"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_security_group" "db" {
  name_prefix = "${var.name}-db-"
  vpc_id      = var.vpc_id
  description = "PostgreSQL: from the controllers only"
  tags        = local.tags

  ingress {
    description     = "From the controllers"
    from_port       = 5432
    to_port         = 5432
    protocol        = "tcp"
    security_groups = [aws_security_group.controller.id]
  }
}

resource "aws_security_group" "efs" {
  name_prefix = "${var.name}-efs-"
  vpc_id      = var.vpc_id
  description = "Blob store (NFS): from the controllers only"
  tags        = local.tags

  ingress {
    description     = "NFS from the controllers"
    from_port       = 2049
    to_port         = 2049
    protocol        = "tcp"
    security_groups = [aws_security_group.controller.id]
  }
}

resource "aws_security_group" "agent" {
  name_prefix = "${var.name}-agent-"
  vpc_id      = var.vpc_id
  description = "Conveyor agents: nothing inbound; they connect out"
  tags        = local.tags

  egress {
    description = "The load balancer, package registries, git hosts"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

# ---------------------------------------------------------------- PostgreSQL (RDS)

resource "random_password" "db" {
  length  = 32
  special = false
}

resource "aws_db_subnet_group" "conveyor" {
  name       = var.name
  subnet_ids = var.private_subnet_ids
  tags       = local.tags
}

resource "aws_db_instance" "conveyor" {
  identifier                   = var.name
  engine                       = "postgres"
  engine_version               = "16"
  instance_class               = var.db_instance_class
  allocated_storage            = 100
  max_allocated_storage        = 1000
  storage_encrypted            = true
  db_name                      = "conveyor"
  username                     = "conveyor"
  password                     = random_password.db.result
  multi_az                     = true
  db_subnet_group_name         = aws_db_subnet_group.conveyor.name
  vpc_security_group_ids       = [aws_security_group.db.id]
  backup_retention_period      = 14
  deletion_protection          = true
  skip_final_snapshot          = false
  final_snapshot_identifier    = "${var.name}-final"
  performance_insights_enabled = true
  tags                         = local.tags
}

# ---------------------------------------------------------------- blob store (EFS)

resource "aws_efs_file_system" "blobs" {
  encrypted = true
  tags      = merge(local.tags, { Name = "${var.name}-blobs" })
}

resource "aws_efs_mount_target" "blobs" {
  for_each        = toset(var.private_subnet_ids)
  file_system_id  = aws_efs_file_system.blobs.id
  subnet_id       = each.value
  security_groups = [aws_security_group.efs.id]
}

# ---------------------------------------------------------------- load balancer

resource "aws_lb" "conveyor" {
  name               = var.name
  load_balancer_type = "application"
  subnets            = var.public_subnet_ids
  security_groups    = [aws_security_group.lb.id]
  # Agent long-polls and live logs (Server-Sent Events) stay open.
  idle_timeout = 3600
  tags         = local.tags
}

resource "aws_lb_target_group" "controllers" {
  name     = "${var.name}-controllers"
  port     = 8080
  protocol = "HTTP"
  vpc_id   = var.vpc_id
  # A stopping controller finishes its requests before it is removed.
  deregistration_delay = 30
  tags                 = local.tags

  health_check {
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.conveyor.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.controllers.arn
  }
}

# ---------------------------------------------------------------- controllers

resource "aws_launch_template" "controller" {
  name_prefix            = "${var.name}-controller-"
  image_id               = var.ami_id
  instance_type          = var.controller_instance_type
  vpc_security_group_ids = [aws_security_group.controller.id]
  user_data = base64encode(templatefile("${path.module}/controller-user-data.sh.tftpl", {
    conveyor_package = var.conveyor_package
    database_url     = "postgresql://conveyor:${random_password.db.result}@${aws_db_instance.conveyor.endpoint}/conveyor"
    efs_dns_name     = aws_efs_file_system.blobs.dns_name
    public_url       = "https://${aws_lb.conveyor.dns_name}"
  }))

  metadata_options {
    http_tokens = "required"
  }
}

resource "aws_autoscaling_group" "controllers" {
  name                = "${var.name}-controllers"
  min_size            = var.controller_count
  max_size            = var.controller_count + 1
  desired_capacity    = var.controller_count
  vpc_zone_identifier = var.private_subnet_ids
  target_group_arns   = [aws_lb_target_group.controllers.arn]
  health_check_type   = "ELB"
  # First start migrates the schema.
  health_check_grace_period = 300

  launch_template {
    id      = aws_launch_template.controller.id
    version = "$Latest"
  }

  # A new launch template (an upgrade) replaces controllers one at a time, each
  # healthy behind the load balancer before the next goes (docs/upgrading.md).
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 100
      max_healthy_percentage = 150
      instance_warmup        = 120
    }
  }

  tag {
    key                 = "Name"
    value               = "${var.name}-controller"
    propagate_at_launch = true
  }
}

# ---------------------------------------------------------------- agents

resource "aws_launch_template" "agent" {
  name_prefix            = "${var.name}-agent-"
  image_id               = var.ami_id
  instance_type          = var.agent_instance_type
  vpc_security_group_ids = [aws_security_group.agent.id]
  user_data = base64encode(templatefile("${path.module}/agent-user-data.sh.tftpl", {
    conveyor_package = var.conveyor_package
    url              = "https://${aws_lb.conveyor.dns_name}"
    token            = var.agent_token
  }))

  metadata_options {
    http_tokens = "required"
  }
}

resource "aws_autoscaling_group" "agents" {
  name                = "${var.name}-agents"
  min_size            = var.agent_min
  max_size            = var.agent_max
  vpc_zone_identifier = var.private_subnet_ids

  launch_template {
    id      = aws_launch_template.agent.id
    version = "$Latest"
  }

  tag {
    key                 = "Name"
    value               = "${var.name}-agent"
    propagate_at_launch = true
  }
}

# Scale agents on CPU as a simple default; Conveyor's queue-depth metric
# (conveyor_builds_queued) via CloudWatch is the better signal where it is exported.
resource "aws_autoscaling_policy" "agents_cpu" {
  name                   = "${var.name}-agents-cpu"
  autoscaling_group_name = aws_autoscaling_group.agents.name
  policy_type            = "TargetTrackingScaling"

  target_tracking_configuration {
    predefined_metric_specification {
      predefined_metric_type = "ASGAverageCPUUtilization"
    }
    target_value = 60
  }
}
