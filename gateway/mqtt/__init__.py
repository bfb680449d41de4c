"""The MQTT transport: ESP8266 purifiers through a broker (docs/mqtt.md)."""

from gateway.mqtt.bridge import MQTT_CONN_ID, MQTT_NODE, MqttBridge
from gateway.mqtt.link import MqttDevice

__all__ = ["MQTT_CONN_ID", "MQTT_NODE", "MqttBridge", "MqttDevice"]
