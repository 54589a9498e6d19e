"""/imports/nodes: the nodes that import here, for users with the ``camera_admin`` role.

``GET /imports/nodes``   each importing user (a node's login), most recent first: the server
                         id it last announced, its first and last import, what it sent in the
                         last 24 hours and in all, and its last problem (see
                         :mod:`meteorpi_server.storage.node_activity`)
"""
from __future__ import annotations

from flask import Blueprint, jsonify

from ..storage import store
from ..storage.node_activity import list_nodes
from .context import services
from .security import requires_role

blueprint = Blueprint("replication", __name__)

ROLE = "camera_admin"


@blueprint.get("/imports/nodes")
@requires_role(ROLE)
def imports_nodes():
    now = store.now_ms()
    with services().database.read() as session:
        nodes = list_nodes(session, now)
    return jsonify({"nodes": [node.to_dict() for node in nodes]})
