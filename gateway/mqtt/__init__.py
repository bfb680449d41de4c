"""The MQTT transport: ESP8266 purifiers through a broker (docs/mqtt.md)."""

from aquafleet.gateway.mqtt.bridge import MQTT_CONN_ID, MQTT_NODE, MqttBridge
from aquafleet.gateway.mqtt.link import MqttDevice

__all__ = ["MQTT_CONN_ID", "MQTT_NODE", "MqttBridge", "MqttDevice"]
