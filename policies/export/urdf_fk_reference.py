"""Forward kinematics of a URDF with yourdfpy (an independent URDF library from
PyPI), used to cross-check reflex's kinematic chain (runtime/src/robot_model.rs).

    urdf_fk_reference.py --request request.json

The request is JSON: {"urdf": PATH, "links": [NAME...], "configs": [{JOINT: q}...]}.
Prints JSON: {"actuated": [JOINT...], "base": LINK, "poses": [[[4x4 row-major]
per link] per config]}, each pose the link's frame in the URDF's base link frame.
"""

import argparse
import json

import numpy as np
import yourdfpy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--request", required=True)
    args = parser.parse_args()
    with open(args.request) as f:
        request = json.load(f)
    robot = yourdfpy.URDF.load(
        request["urdf"],
        load_meshes=False,
        build_collision_scene_graph=False,
        load_collision_meshes=False,
    )
    poses = []
    for config in request["configs"]:
        robot.update_cfg({name: float(q) for name, q in config.items()})
        poses.append(
            [np.asarray(robot.get_transform(link), dtype=np.float64).tolist() for link in request["links"]]
        )
    print(json.dumps({"actuated": list(robot.actuated_joint_names), "base": robot.base_link, "poses": poses}))


if __name__ == "__main__":
    main()
