"""The HTTP job API (`appliance api`): tenants' API keys, jobs over HTTP, live progress, webhooks wiring."""
