"""TorchX components: validated like `torchx run COMPONENT --help`, and their app specs."""

from torchx.components.component_test_base import ComponentTestCase

from launch import components


class ComponentsTest(ComponentTestCase):
    def test_validate_every_component(self) -> None:
        for name in ("train", "swing", "features", "pipeline", "experiment"):
            self.validate(components, name)

    def test_train_is_torchrun_ddp(self) -> None:
        app = components.train("--config", "configs/movielens-100k.yaml", "epochs=3", j="2x4", gpu=8)
        (role,) = app.roles
        self.assertEqual(role.num_replicas, 2)
        self.assertEqual(role.resource.gpu, 8)
        cmd = role.args[1]
        self.assertIn("torchrun", cmd)
        self.assertIn("--nproc_per_node 4", cmd)
        self.assertIn("-m launch.cli train --config configs/movielens-100k.yaml epochs=3", cmd)

    def test_swing_runs_the_similarity_job(self) -> None:
        app = components.swing("--config", "c.yaml", j="1x2")
        self.assertIn("-m launch.cli similarity swing --config c.yaml", app.roles[0].args[1])

    def test_features_is_one_process(self) -> None:
        app = components.features("--config", "c.yaml")
        role = app.roles[0]
        self.assertEqual(role.entrypoint, "python")
        self.assertEqual(role.args, ["-m", "launch.cli", "features", "build", "--config", "c.yaml"])

    def test_experiment_runs_the_grid(self) -> None:
        app = components.experiment("--grid", "configs/table1-movielens-100k.yaml")
        self.assertEqual(app.roles[0].args, ["-m", "launch.cli", "experiment", "--grid", "configs/table1-movielens-100k.yaml"])
