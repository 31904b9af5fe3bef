output "url" {
  description = "Conveyor's URL (point a DNS name with the certificate's host at it)"
  value       = "https://${aws_lb.conveyor.dns_name}"
}

output "database_endpoint" {
  description = "The RDS endpoint the controllers use"
  value       = aws_db_instance.conveyor.endpoint
}
