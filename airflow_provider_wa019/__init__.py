"""Apache Airflow provider for the 019sms WhatsApp Business API.

Kept import-free on purpose: DAG files import the operator at every parse, so nothing heavy
(requests, phonenumbers, the simulator) loads until a task actually sends.
"""

from __future__ import annotations

__version__ = "0.1.0"
