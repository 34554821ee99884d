"""The agent daemon: collectors -> queue -> attribution -> engine -> journal, metrics, forwarder."""
